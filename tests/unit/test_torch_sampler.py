"""cachefs.torch with real PyTorch (skipped without it): the wrapper is a torch Sampler, a DataLoader
with worker processes gets exactly the wrapped sampler's indices, and the order sent is theirs."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler  # noqa: E402

from cachefs.torch import HintedSampler, hinted_loader  # noqa: E402


class Numbers(Dataset):
    def __init__(self, n):
        self.paths = [f"/mnt/x/{i}.bin" for i in range(n)]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.tensor(i)


def test_dataloader_with_workers_reads_what_was_sent():
    sent = []
    data = Numbers(40)
    sampler = HintedSampler(RandomSampler(data, generator=torch.Generator().manual_seed(3)), "/mnt/x",
                            dataset=data, send=lambda mp, paths, epoch=None, stream=None: sent.append(list(paths)))
    assert isinstance(sampler, Sampler)
    loader = DataLoader(data, sampler=sampler, batch_size=5, num_workers=2)
    got = [int(i) for batch in loader for i in batch]
    sampler.sender.join(5)
    assert sorted(got) == list(range(40))
    assert sent == [[data.paths[i] for i in got]]


def test_distributed_sampler_gives_its_rank_as_the_stream():
    data = Numbers(10)
    for rank in (0, 1):
        s = HintedSampler(DistributedSampler(data, num_replicas=2, rank=rank), "/mnt/x", dataset=data,
                          send=lambda *a, **k: {})
        assert s.stream == f"rank{rank}" and len(s) == 5


def test_hinted_loader_builds_a_loader():
    loader = hinted_loader(Numbers(6), "/not/a/mount", batch_size=3)
    assert isinstance(loader.sampler, HintedSampler)
    assert sorted(int(i) for b in loader for i in b) == list(range(6))   # a failed hint: a warning only
