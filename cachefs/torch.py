"""PyTorch: tell a cachefs mount each epoch's reading order before the DataLoader asks for the files.

    from cachefs.torch import HintedSampler
    sampler = HintedSampler(DistributedSampler(dataset), "/mnt/imagenet", dataset=dataset)
    loader = DataLoader(dataset, sampler=sampler, batch_size=256, num_workers=8)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader: ...

Each `iter(sampler)` draws the wrapped sampler's indices for the epoch, starts a background thread that
streams their paths to the mount (cachefs.hints.send_order), and yields the same indices: the loader's
workers open files the daemon is already fetching, in that order. The sampler runs in the main process
whatever `num_workers` is, so one order per epoch and rank is sent; with `DistributedSampler` each rank
sends its own shard under its own stream name, so ranks sharing a mount do not replace each other's.

PyTorch stays optional: this module imports without it and the wrapper takes anything with `__iter__`
(and `__len__`) as the sampler; `hinted_loader` needs PyTorch and says so.
"""
from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cachefs.hints import HintError, send_order

log = logging.getLogger(__name__)

# torch through importlib: optional, and the type checker need not have it.
_Base: type
try:                                   # the base class only, so `isinstance(s, Sampler)` holds with torch
    _Base = importlib.import_module("torch.utils.data").Sampler
except ImportError:                    # torch is optional: duck typing without it
    _Base = object

__all__ = ["HintedSampler", "hinted_loader", "paths_of"]


def _require_torch():
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        raise ImportError("cachefs.torch.hinted_loader needs PyTorch (pip install torch); "
                          "HintedSampler and cachefs.hints.send_order work without it") from None
    return torch


def paths_of(dataset: Any) -> Callable[[int], str]:
    """index -> path for a dataset with a `paths` list, or torchvision's ImageFolder/DatasetFolder
    (`samples`: (path, class) pairs)."""
    paths = getattr(dataset, "paths", None)
    if paths is not None:
        return lambda i: os.fspath(paths[i])
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        return lambda i: os.fspath(samples[i][0])
    raise TypeError(f"{type(dataset).__name__} has neither `paths` nor `samples`: pass path_of=index -> path")


def _default_stream(sampler: Any) -> str:
    rank = getattr(sampler, "rank", None)        # DistributedSampler's
    if rank is None:
        try:
            dist = importlib.import_module("torch.distributed")
            if dist.is_available() and dist.is_initialized():
                rank = dist.get_rank()
        except ImportError:
            pass
    return f"rank{rank}" if rank is not None else "default"


class HintedSampler(_Base):
    """Wraps a sampler (or batch sampler) and sends each epoch's order of paths to a cachefs mount."""

    def __init__(self, sampler: Iterable, mountpoint: str, *, dataset: Any = None,
                 path_of: Callable[[int], str] | None = None, stream: str | None = None,
                 send: Callable[..., dict] = send_order) -> None:
        if not hasattr(sampler, "__iter__"):
            raise TypeError(f"sampler must be iterable, got {type(sampler).__name__}")
        if path_of is None:
            if dataset is None:
                raise TypeError("give path_of=index -> path, or dataset= with a `paths` attribute")
            path_of = paths_of(dataset)
        self.sampler = sampler
        self.mountpoint = mountpoint
        self.path_of = path_of
        self.stream = stream or _default_stream(sampler)
        self.epoch: int | None = None
        self._iterations = 0
        self._send = send
        self.sender: threading.Thread | None = None     # the last epoch's; tests and callers may join it
        self.last_answer: dict | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)     # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        indices = list(self.sampler)
        epoch = self.epoch if self.epoch is not None else self._iterations
        self._iterations += 1
        self.sender = threading.Thread(target=self._send_order, args=(indices, epoch),
                                       name="cachefs-order", daemon=True)
        self.sender.start()
        return iter(indices)

    def _paths(self, indices: list) -> Iterator[str]:
        for item in indices:
            if isinstance(item, (list, tuple)):     # a batch sampler's batch
                for i in item:
                    yield self.path_of(i)
            else:
                yield self.path_of(item)

    def _send_order(self, indices: list, epoch: int) -> None:
        """A hint only: a failure is a warning, never an error of the training loop."""
        try:
            self.last_answer = self._send(self.mountpoint, self._paths(indices), epoch=epoch, stream=self.stream)
        except (HintError, OSError, ValueError) as e:
            log.warning("cachefs: the reading order of epoch %s was not sent to %s: %s", epoch, self.mountpoint, e)
        except Exception as e:  # noqa: BLE001 - the user's path_of: same rule
            log.warning("cachefs: the reading order of epoch %s was not sent: %s: %s", epoch, type(e).__name__, e)


def hinted_loader(dataset: Any, mountpoint: str, *, sampler: Iterable | None = None, shuffle: bool = True,
                  path_of: Callable[[int], str] | None = None, **loader_args: Any):
    """A DataLoader over `dataset` whose sampler (a RandomSampler by default) is a HintedSampler."""
    torch = _require_torch()
    data = torch.utils.data
    if sampler is None:
        sampler = data.RandomSampler(dataset) if shuffle else data.SequentialSampler(dataset)
    hinted = HintedSampler(sampler, mountpoint, dataset=dataset, path_of=path_of)
    return data.DataLoader(dataset, sampler=hinted, **loader_args)
