"""Fixtures shared by the unit tests."""
import pytest

from cachefs.meta.store import MetaStore


@pytest.fixture
def meta(tmp_path):
    """A metadata store in the test's directory: the block index of the cache tests."""
    m = MetaStore(str(tmp_path / "meta"), "id")
    yield m
    m.close()
