"""cachefs.torch with real PyTorch on a real mount: a DataLoader with workers over a DistributedSampler
wrapped in HintedSampler sends each epoch's shard, and the daemon fetches it ahead (skipped without
torch: `pytest.importorskip`)."""
from __future__ import annotations

import time

import pytest
from mount_helpers import object_bytes, wait_until

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, Dataset, DistributedSampler  # noqa: E402

from cachefs.torch import HintedSampler  # noqa: E402

FILES = [f"train/c{i % 3}/x{i:02d}.bin" for i in range(24)]
OBJECTS = {k: object_bytes(k, 1500 + i) for i, k in enumerate(FILES)}


class Files(Dataset):
    def __init__(self, root):
        self.paths = [str(root / k) for k in FILES]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with open(self.paths[i], "rb") as f:
            return torch.tensor(len(f.read()))


def test_distributed_shards_sent_per_rank_and_fetched_ahead(mounter, make_bucket, request_log):
    bucket = make_bucket("order-torch", OBJECTS)
    # no duplicate of a slow GET (hedging): the test counts one GET per file
    m = mounter.mount(bucket, "--metrics-addr", "none", "--prefetch-small-files", "0", "--hedging", "false")
    data = Files(m.path)
    samplers = [HintedSampler(DistributedSampler(data, num_replicas=2, rank=r, seed=7), str(m.path), dataset=data)
                for r in (0, 1)]
    assert [s.stream for s in samplers] == ["rank0", "rank1"]
    mark = request_log.mark()
    for s in samplers:
        s.set_epoch(0)
        iter(s)
        s.sender.join(10)
        assert s.last_answer and s.last_answer["received"] == 12, s.last_answer
    # both ranks' orders coexist: all 24 files are fetched ahead, once each
    assert wait_until(lambda: m.stats()["order_prefetched_files"] == 24, 30), m.stats()
    gets = [r.key for r in request_log.since(mark, bucket) if r.is_object_get]
    assert sorted(gets) == sorted(FILES)
    loader = DataLoader(data, sampler=samplers[0], batch_size=4, num_workers=2)
    samplers[0].set_epoch(1)
    sizes = sorted(int(x) for batch in loader for x in batch)
    same = DistributedSampler(data, num_replicas=2, rank=0, seed=7)
    same.set_epoch(1)
    expected = sorted(len(OBJECTS[FILES[i]]) for i in same)
    assert sizes == expected
    time.sleep(0.5)
    assert m.stats()["orders_received"] == 3
