"""Node RPCs against the running server: real mounts through NodePublishVolume (against moto with
credentials enforced), real unmounts through NodeUnpublishVolume, restarts and dead mounts."""
from __future__ import annotations

import concurrent.futures
import errno
import os
import signal
import stat
import urllib.request

import grpc
import pytest
from mount_helpers import is_mounted, log_problems, pid_alive, s3_client, wait_until

from cachefs.csi.proto import pb
from cachefs.csi.records import CacheSlots, StateDir
from cachefs.csi.warm import warm_bytes
from cachefs.ipc import control_request

from .conftest import block_capability, mount_capability, status_of

Code = grpc.StatusCode


@pytest.fixture(scope="module")
def dataset(auth_moto):
    """A bucket on the moto server that enforces credentials: a mount works only with the secret."""
    return auth_moto


def publish_request(ds, target, volume_id=None, secrets=True, **context):
    return pb.NodePublishVolumeRequest(
        volume_id=volume_id or f"{ds.bucket}", target_path=str(target), volume_capability=mount_capability(),
        readonly=True, secrets={"accessKeyID": ds.key_id, "secretAccessKey": ds.secret} if secrets else {},
        volume_context={"bucket": ds.bucket, "endpoint_url": ds.endpoint_url, "block_size": "256KiB",
                        **context})


def unpublish(server, target, volume_id):
    return server.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=volume_id,
                                                                        target_path=str(target)))


def _errno_of(fn, *args) -> int:
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return 0


def daemon_pid(server) -> int:
    [pidfile] = [p / "cachefs.pid" for p in server.slot_dirs() if (p / "cachefs.pid").exists()]
    return int(pidfile.read_text())


def daemon_log(server) -> str:
    return "".join((p / "cachefs.log").read_text(errors="replace") for p in server.slot_dirs()
                   if (p / "cachefs.log").exists())


def test_publish_mounts_unpublish_unmounts(csi_server, dataset, target):
    req = publish_request(dataset, target)
    offsets = {p.name: len(p.joinpath("cachefs.log").read_text()) for p in csi_server.slot_dirs()
               if p.joinpath("cachefs.log").exists()}
    csi_server.node.NodePublishVolume(req)
    assert is_mounted(target)
    assert (target / "hello.txt").read_bytes() == b"hello\n"
    with pytest.raises(OSError) as err:                 # readonly: nothing can be written
        (target / "new.txt").write_bytes(b"x")
    assert err.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    csi_server.node.NodePublishVolume(req)              # the same request again: OK, same mount
    pid = daemon_pid(csi_server)

    # The secret is in a 0600 file, never in any argv or log.
    for proc in (pid, csi_server.proc.pid):
        with open(f"/proc/{proc}/cmdline", "rb") as f:
            assert dataset.secret.encode() not in f.read()
    creds = list((csi_server.state_dir / "secrets").iterdir())
    assert len(creds) == 1 and stat.S_IMODE(creds[0].stat().st_mode) == 0o600
    assert dataset.secret not in csi_server.log() + daemon_log(csi_server)

    # The node reports the dataset warm: the daemon's own account of its disk tiers.
    st = StateDir(str(csi_server.state_dir))
    warm = warm_bytes(st, CacheSlots(str(csi_server.cache_root)), lambda slot: [])
    assert warm == {dataset.bucket: control_request(str(target), "stats")["stats"]["cache_bytes"]}
    assert warm[dataset.bucket] > 0

    # Its exporter listens on the port the node server gave it (the metrics Service's ports).
    [pub] = st.all()
    with urllib.request.urlopen(f"http://127.0.0.1:{pub.metrics_port}/metrics", timeout=10) as resp:
        assert b"cachefs_" in resp.read()

    unpublish(csi_server, target, req.volume_id)
    assert not is_mounted(target) and not target.exists()
    assert wait_until(lambda: not pid_alive(pid), 10), "daemon still running after unpublish"
    assert not list((csi_server.state_dir / "secrets").iterdir())
    unpublish(csi_server, target, req.volume_id)        # idempotent
    log_text = (csi_server.cache_root / pub.slot / "cachefs.log").read_text()[offsets.get(pub.slot, 0):]
    assert log_problems(log_text) == []


def test_publish_argument_errors(csi_server, dataset, target):
    publish = csi_server.node.NodePublishVolume
    base = publish_request(dataset, target)

    def variant(**fields):
        r = pb.NodePublishVolumeRequest()
        r.CopyFrom(base)
        for k, v in fields.items():
            if k == "volume_capability" and v is None:
                r.ClearField("volume_capability")
            elif k == "volume_capability":
                r.volume_capability.CopyFrom(v)
            elif k == "volume_context":
                r.volume_context.clear()
                r.volume_context.update(v)
            else:
                setattr(r, k, v)
        return r

    assert status_of(publish, variant(volume_id="")) == Code.INVALID_ARGUMENT
    assert status_of(publish, variant(target_path="")) == Code.INVALID_ARGUMENT
    assert status_of(publish, variant(volume_capability=None)) == Code.INVALID_ARGUMENT
    assert status_of(publish, variant(volume_capability=block_capability())) == Code.INVALID_ARGUMENT
    assert status_of(publish, variant(volume_context={"bucket": dataset.bucket, "cache": "mem:1GiB"})) \
        == Code.INVALID_ARGUMENT
    assert status_of(publish, variant(volume_context={"bucket": "Not_A_Bucket"})) == Code.INVALID_ARGUMENT
    bad_secret = variant()
    bad_secret.secrets.clear()
    bad_secret.secrets.update({"accessKeyID": "only-half"})
    assert status_of(publish, bad_secret) == Code.INVALID_ARGUMENT
    assert not is_mounted(target)
    assert status_of(csi_server.node.NodeUnpublishVolume,
                     pb.NodeUnpublishVolumeRequest(volume_id="", target_path=str(target))) == Code.INVALID_ARGUMENT
    assert status_of(csi_server.node.NodeUnpublishVolume,
                     pb.NodeUnpublishVolumeRequest(volume_id="v", target_path="")) == Code.INVALID_ARGUMENT


def test_publish_without_the_secret_fails_and_leaves_nothing(csi_server, dataset, target):
    # moto refuses the anonymous requests (its daemon logs that, in a slot no other test checks)
    req = publish_request(dataset, target, secrets=False, s3_max_attempts="1")
    code = status_of(csi_server.node.NodePublishVolume, req)
    assert code == Code.INTERNAL
    assert not is_mounted(target)
    assert not list((csi_server.state_dir / "volumes").iterdir())


def test_conflicts_restart_adoption_and_dead_mount(csi_server, dataset, target):
    req = publish_request(dataset, target, volume_id="vol-a")
    # Two publishes of one target at once: one mounts, the other is ABORTED (the CO retries) or, if
    # it came late, finds the mount done.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        codes = list(pool.map(lambda _: status_of(csi_server.node.NodePublishVolume, req), range(2)))
    assert Code.OK in codes and set(codes) <= {Code.OK, Code.ABORTED}, codes
    assert len([line for line in open("/proc/self/mountinfo") if f" {target} " in line]) == 1
    other = publish_request(dataset, target, volume_id="vol-b")
    assert status_of(csi_server.node.NodePublishVolume, other) == Code.ALREADY_EXISTS
    changed = publish_request(dataset, target, volume_id="vol-a", block_size="1MiB")
    assert status_of(csi_server.node.NodePublishVolume, changed) == Code.ALREADY_EXISTS
    assert status_of(unpublish, csi_server, target, "vol-b") == Code.NOT_FOUND
    pid = daemon_pid(csi_server)

    # The node server dies; the daemon and its mount do not. The next server adopts the mount.
    csi_server.restart()
    assert pid_alive(pid) and is_mounted(target)
    assert "adopted 1 mounts" in csi_server.log()
    csi_server.node.NodePublishVolume(req)             # idempotent across the restart
    assert daemon_pid(csi_server) == pid

    # The daemon dies (kill -9): the mount is dead, and unpublish still cleans it up.
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), 10)
    assert wait_until(lambda: _errno_of(os.statvfs, target) == errno.ENOTCONN, 10), \
        "the mount did not turn into 'Transport endpoint is not connected'"
    unpublish(csi_server, target, "vol-a")
    assert not is_mounted(target) and not target.exists()
    unpublish(csi_server, target, "vol-a")


def test_access_modes_select_read_only_or_read_write(csi_server, dataset, target):
    """Reader modes (or readonly) mount --read-only; writer modes mount read-write, and unpublish
    uploads what was written before the daemon goes (`cachefs umount` waits for it)."""
    Mode = pb.VolumeCapability.AccessMode

    def request(mode, readonly, volume_id):
        req = publish_request(dataset, target, volume_id=volume_id)
        req.readonly = readonly
        req.volume_capability.access_mode.mode = mode
        return req

    state = StateDir(str(csi_server.state_dir))
    for mode, readonly in ((Mode.MULTI_NODE_READER_ONLY, False), (Mode.SINGLE_NODE_WRITER, True)):
        csi_server.node.NodePublishVolume(request(mode, readonly, "vol-ro"))
        [pub] = state.all()
        assert pub.readonly and "--read-only" in pub.argv
        assert _errno_of((target / "x.txt").write_bytes, b"x") == errno.EROFS
        unpublish(csi_server, target, "vol-ro")

    assert status_of(csi_server.node.NodePublishVolume,
                     request(Mode.MULTI_NODE_MULTI_WRITER, False, "vol-rwx")) == Code.INVALID_ARGUMENT
    node_owned = request(Mode.SINGLE_NODE_WRITER, False, "vol-rw")
    node_owned.volume_context["read_only"] = "false"            # the access mode's, not the volume's
    assert status_of(csi_server.node.NodePublishVolume, node_owned) == Code.INVALID_ARGUMENT

    writer = request(Mode.SINGLE_NODE_WRITER, False, "vol-rw")
    writer.volume_context["small_sync_interval"] = "1"            # a volume's own upload schedule
    csi_server.node.NodePublishVolume(writer)
    [pub] = state.all()
    assert pub.options["small_sync_interval"] == "1"
    assert not pub.readonly and "--read-only" not in pub.argv
    # Publishing it again read-only is a different publication.
    assert status_of(csi_server.node.NodePublishVolume,
                     request(Mode.SINGLE_NODE_WRITER, True, "vol-rw")) == Code.ALREADY_EXISTS
    key = f"written-{os.getpid()}.txt"
    (target / key).write_bytes(b"from a writer pod\n")
    unpublish(csi_server, target, "vol-rw")
    assert not is_mounted(target)
    s3 = s3_client(dataset.endpoint_url, dataset.key_id, dataset.secret)
    assert s3.get_object(Bucket=dataset.bucket, Key=key)["Body"].read() == b"from a writer pod\n"
    s3.delete_object(Bucket=dataset.bucket, Key=key)


def test_a_dead_mount_that_answers_nothing_is_still_there(tmp_path, monkeypatch):
    """A daemon killed before it answered anything leaves a mount whose lstat fails with ENOTCONN:
    its record is mounted again, not dropped as if nothing were there."""
    from cachefs.csi import node as node_module
    real_lstat = os.lstat
    dead = str(tmp_path / "dead")

    def lstat(path, *a, **kw):
        if str(path) == dead:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return real_lstat(path, *a, **kw)
    monkeypatch.setattr(node_module.os, "lstat", lstat)
    assert node_module._present(dead)
    assert not node_module._present(str(tmp_path / "never"))
    assert node_module._present(str(tmp_path))
