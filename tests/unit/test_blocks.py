from cachefs.blocks import block_count, block_key, block_range, blocks_for

BS = 1000


def test_block_range_clips_last_block():
    assert block_range(0, BS, 2500) == (0, 1000)
    assert block_range(2, BS, 2500) == (2000, 2500)


def test_blocks_for_spans_boundaries_and_clips_at_eof():
    assert list(blocks_for(0, 1000, BS, 5000)) == [0]
    assert list(blocks_for(999, 2, BS, 5000)) == [0, 1]
    assert list(blocks_for(1500, 3000, BS, 5000)) == [1, 2, 3, 4]
    assert list(blocks_for(4900, 1000, BS, 5000)) == [4]
    assert list(blocks_for(5000, 10, BS, 5000)) == []
    assert list(blocks_for(10, 0, BS, 5000)) == []
    assert list(blocks_for(0, 10, BS, 0)) == []


def test_block_count():
    assert [block_count(n, BS) for n in (0, 1, 1000, 1001)] == [0, 1, 1, 2]


def test_block_key_changes_with_every_input():
    base = block_key("b", "k", '"e1"', BS, 0)
    assert len(base) == 16
    others = [block_key("b2", "k", '"e1"', BS, 0), block_key("b", "k2", '"e1"', BS, 0),
              block_key("b", "k", '"e2"', BS, 0), block_key("b", "k", '"e1"', BS * 2, 0),
              block_key("b", "k", '"e1"', BS, 1)]
    assert base not in others and len(set(others)) == len(others)
    assert block_key("b", "k", '"e1"', BS, 0) == base
