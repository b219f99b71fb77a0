"""Volume health the kubelet can see: NodeGetVolumeStats turns abnormal, with a message saying why,
when the daemon under the mounter dies or S3 goes away; a republish brings the mount back for new
opens, while file descriptors opened before keep failing."""
from __future__ import annotations

import errno
import os
import signal
import time

from mount_helpers import is_mounted, pid_alive, s3_client, wait_until

from cachefs.csi.proto import pb
from cachefs.devtools.devserver import MotoServer

from .test_mounter import pair  # noqa: F401 - the mounter + node server fixture
from .test_node import daemon_pid, publish_request, unpublish

ABNORMAL_WITHIN_S = 10.0


def condition(server, volume_id, target):
    answer = server.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=volume_id,
                                                                         volume_path=str(target)))
    return answer.volume_condition


def _errno_of(fn) -> int:
    try:
        fn()
    except OSError as e:
        return e.errno
    return 0


def test_a_killed_daemon_under_the_mounter_is_abnormal_within_10_s_and_republish_restores_it(pair, auth_moto):  # noqa: F811
    mounter, server, root = pair
    target = root / "pods" / "health" / "mount"
    target.parent.mkdir(parents=True)
    req = publish_request(auth_moto, target, volume_id="vol-h")
    server.node.NodePublishVolume(req)
    healthy = condition(server, "vol-h", target)
    assert not healthy.abnormal, healthy.message
    held = os.open(target / "hello.txt", os.O_RDONLY)           # a file a pod has open
    try:
        daemon = daemon_pid(server)
        os.kill(daemon, signal.SIGKILL)
        t0 = time.monotonic()
        assert wait_until(lambda: condition(server, "vol-h", target).abnormal, ABNORMAL_WITHIN_S), \
            "NodeGetVolumeStats did not report the dead mount"
        assert time.monotonic() - t0 <= ABNORMAL_WITHIN_S
        dead = condition(server, "vol-h", target)
        assert "daemon" in dead.message and "not connected" in dead.message
        assert _errno_of(lambda: os.pread(held, 6, 0)) in (errno.ENOTCONN, errno.EIO, errno.ECONNABORTED)

        # The next NodePublishVolume (a new pod, or kubelet's retry) clears the dead mount and mounts
        # it again under the mounter: new opens work, the descriptor opened before still fails.
        server.node.NodePublishVolume(req)
        assert is_mounted(target) and not pid_alive(daemon)
        assert daemon_pid(server) != daemon
        assert (target / "hello.txt").read_bytes() == b"hello\n"
        assert not condition(server, "vol-h", target).abnormal
        assert _errno_of(lambda: os.pread(held, 6, 0)) != 0
    finally:
        _errno_of(lambda: os.close(held))      # close() of it reports ENOTCONN too (the flush goes nowhere)
    unpublish(server, target, "vol-h")
    assert not is_mounted(target)


def test_s3_known_down_is_abnormal_and_says_so(csi_server, target):
    """The outage breaker opens after three reads of uncached data fail: NodeGetVolumeStats says S3
    is unreachable while the mount itself is alive."""
    with MotoServer() as moto:
        s3 = s3_client(moto.endpoint_url)
        s3.create_bucket(Bucket="health-outage")
        for i in range(4):
            s3.put_object(Bucket="health-outage", Key=f"f{i}.bin", Body=b"x" * 1000)
        moto.bucket = "health-outage"
        req = publish_request(moto, target, volume_id="vol-out", secrets=False, endpoint_url=moto.endpoint_url,
                              s3_max_attempts="1", s3_read_deadline="2", prefetch_small_files="0")
        req.secrets.update({"accessKeyID": "AKIAEXAMPLE", "secretAccessKey": "x"})   # moto without auth
        csi_server.node.NodePublishVolume(req)
        names = sorted(os.listdir(target))                       # listed while S3 is up
        assert not condition(csi_server, "vol-out", target).abnormal
    # moto stopped: reads of uncached files fail, and three in a row open the breaker
    try:
        for name in names:
            _errno_of(lambda n=name: (target / n).read_bytes())
        assert wait_until(lambda: condition(csi_server, "vol-out", target).abnormal, 10)
        cond = condition(csi_server, "vol-out", target)
        assert "S3 is unreachable" in cond.message, cond.message
    finally:
        unpublish(csi_server, target, "vol-out")
