"""The operator commands reach a daemon through cachefs.ipc only: parsing them imports neither the
daemon nor its read path nor FUSE (only `mount` imports the daemon, lazily)."""
from __future__ import annotations

import os
import subprocess
import sys

CHECK = """
import sys
from cachefs.cli import main
for argv in (["stats", "/mnt"], ["warmup", "/mnt"], ["flush", "/mnt"], ["umount", "/mnt"]):
    main.make_parser().parse_args(argv)
import cachefs.cli.warmup, cachefs.cli.mounthelper
heavy = ("cachefs.daemon", "cachefs.reader", "cachefs.fs", "cachefs.writeback", "cachefs.namespace", "cachefs.meta",
         "cachefs.cache.tiered", "pyfuse3", "boto3")
print(sorted(m for m in sys.modules if m.split(".")[0] in ("pyfuse3", "boto3") or m.startswith(heavy)))
"""


def test_cli_does_not_import_the_daemon():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=root, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": root})
    assert out.stdout.strip() == "[]", out.stdout
