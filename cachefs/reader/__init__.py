"""The read path: BlockReader and its per-open-file ReadState (blockreader.py), directory prefetch
and the dataset walk (prefetch.py)."""
from cachefs.reader.blockreader import BlockReader, ReadState

__all__ = ["BlockReader", "ReadState"]
