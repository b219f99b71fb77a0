"""--kernel-read-ahead and --max-background really reach the mount's sysfs knobs (as root)."""
import os

import pytest
from mount_helpers import wait_until


def _bdi_and_conn(path):
    dev = os.stat(path).st_dev
    return (f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb",
            f"/sys/fs/fuse/connections/{os.minor(dev)}/max_background")


def _read(path):
    with open(path) as f:
        return int(f.read())


@pytest.mark.skipif(os.getuid() != 0, reason="sysfs tuning needs root")
def test_kernel_tuning_is_applied_to_this_mount_only(mounter, make_bucket):
    name = make_bucket("ktune", {"f": b"x" * 1000})
    tuned = mounter.mount(name, "--kernel-read-ahead", "2MiB", "--max-background", "48")
    plain = mounter.mount(name)
    ra, bg = _bdi_and_conn(tuned.path)
    assert wait_until(lambda: _read(ra) == 2048 and _read(bg) == 48, 10), (_read(ra), _read(bg))
    plain_ra, plain_bg = _bdi_and_conn(plain.path)
    assert _read(plain_ra) != 2048 and _read(plain_bg) != 48
    assert (tuned / "f").read_bytes() == b"x" * 1000
