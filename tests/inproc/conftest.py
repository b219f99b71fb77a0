"""The `fs` fixture (an FsHarness in the test's tmp dir) and async tests run under trio.

`async def test_x(fs)` runs inside `fs.serve`, with the mount's background work going. Options for
the mount: `@pytest.mark.fs(read_only=True, ...)` (Config option names and values). A test fails if
cachefs logged an error (as a real mount's test fails on an error in the daemon log)."""
from __future__ import annotations

import functools
import inspect
import logging

import pytest
import trio

from inproc.harness import ErrorLog, FsHarness


def pytest_configure(config):
    config.addinivalue_line("markers", "fs(**options): Config options of the in-process mount")


@pytest.fixture
def fs(request, tmp_path):
    mark = request.node.get_closest_marker("fs")
    harness = FsHarness(tmp_path / "mount", **(mark.kwargs if mark else {}))
    errors = ErrorLog()
    logging.getLogger("cachefs").addHandler(errors)
    try:
        yield harness
    finally:
        logging.getLogger("cachefs").removeHandler(errors)
        harness.close()
    if errors.records:
        pytest.fail("cachefs logged errors:\n" + "\n".join(errors.format(r) for r in errors.records[:20]),
                    pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    body = functools.partial(pyfuncitem.obj, **args)
    harness = next((v for v in args.values() if isinstance(v, FsHarness)), None)
    if harness is not None:
        trio.run(harness.serve, body)
    else:
        trio.run(body)
    return True
