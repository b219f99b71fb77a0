"""The test tiers, cheapest first, as pytest markers given by where a test lives:

- unit:     tests/unit, and tests/csi files that neither mount nor start a process (CSI_UNIT_FILES);
- inproc:   tests/inproc, cachefs.fs Operations driven in-process over mem:// (no kernel, no S3 server);
- mount:    a real FUSE mount in a subprocess against moto's S3 server (every other file);
- scenario: end-to-end runs: crash, faults, stress, soak, the model-based random test, benchmarks.

`make test-fast` runs `-m "unit or inproc"`; `make test` runs them all. The fixtures of the mount
tiers (moto, buckets, mounts) live in mount_fixtures.py and start only when a test asks for them:
a session of the fast tiers fails if it started moto.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["mount_fixtures"]

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "inproc", "mount", "scenario")
FAST_TIERS = ("unit", "inproc")
SCENARIO_FILES = {"test_reliability_stress.py", "test_fsrand.py", "test_reliability_soak.py",
                  "test_reliability_fault_matrix.py"}
SCENARIO_PREFIXES = ("test_bench_",)
# Chart rendering and schema checks, all in this process. The other tests/csi files start the CSI
# server, the mounter, daemons or the CLI as processes (and most need moto).
CSI_UNIT_FILES = {"test_helm.py", "test_helm_monitoring.py"}
# Fixtures that start an S3 server: no test of a fast tier may use one.
_SERVER_FIXTURES = {"moto_server", "auth_moto"}


# The daemons' disk tiers take no new blocks below this much free space on their filesystem (the
# default min_free, 5%), and the suite writes a few GiB under the temp dir as it runs.
HOST_FREE_NEEDED = 0.06


def _host_free() -> float:
    st = os.statvfs(tempfile.gettempdir())
    return st.f_bavail / st.f_blocks if st.f_blocks else 1.0


def pytest_report_header(config):
    return f"temp dir {tempfile.gettempdir()}: {_host_free():.1%} of its filesystem free"


def pytest_sessionstart(session):
    """A host disk too full for the mounts' disk tiers fails every cache test the same way: say so once."""
    free = _host_free()
    if free < HOST_FREE_NEEDED:
        pytest.exit(f"the filesystem of {tempfile.gettempdir()} has {free:.1%} free: cachefs's disk tiers "
                    f"cache nothing below 5% (min_free), so the mount tests need {HOST_FREE_NEEDED:.0%}; "
                    "free some space", returncode=3)


def tier_of(path: Path) -> str | None:
    try:
        rel = path.resolve().relative_to(TESTS)
    except ValueError:
        return None                   # not below tests/ (say, a file given by path elsewhere)
    top = rel.parts[0]
    if top in ("unit", "inproc"):
        return top
    if top == "csi":
        return "unit" if rel.name in CSI_UNIT_FILES else "mount"
    if rel.name in SCENARIO_FILES or rel.name.startswith(SCENARIO_PREFIXES):
        return "scenario"
    return "mount"


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = tier_of(Path(item.path))
        if tier is not None:
            item.add_marker(tier)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before any fixture starts: a fast-tier test that would start an S3 server fails instead."""
    if any(item.get_closest_marker(t) for t in FAST_TIERS):
        servers = _SERVER_FIXTURES & set(item.fixturenames)
        if servers:
            pytest.fail(f"a {'/'.join(FAST_TIERS)} test must not use {', '.join(sorted(servers))} "
                        f"(move it to the mount tier)", pytrace=False)


def _moto_children() -> list[int]:
    """Our child processes running moto's server (started by any means, not only the fixtures)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != os.getpid():
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"moto.server" in f.read():
                    found.append(int(pid))
        except (OSError, ValueError, IndexError):
            continue
    return found


def pytest_sessionfinish(session, exitstatus):
    items = getattr(session, "items", None) or []
    tiers = {item.get_closest_marker(t) and t for item in items for t in TIERS} - {None}
    if not items or not tiers <= set(FAST_TIERS):
        return
    fixtures = sys.modules.get("mount_fixtures")      # the plugin (imported by pytest, rewritten)
    started = list(getattr(fixtures, "MOTO_STARTED", [])) + [f"pid {p}" for p in _moto_children()]
    if started:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"ERROR: a session of the fast tiers started moto: {', '.join(started)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
