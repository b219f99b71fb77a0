"""The container image: image/Dockerfile and image/build.sh (the same image built without a Docker
engine), the OCI writer, and how the chart's image values map to what `make image` tags.

Static checks and the OCI writer run in `make test` (seconds). The image itself, built by
`make image` (several minutes the first time: debootstrap), is checked by `make image-test`, which
sets CACHEFS_IMAGE_LAYOUT: it is unpacked from its OCI layout (what a runtime would run) and, in a
chroot, runs `cachefs --version` and `cachefs csi --help`, mounts a bucket of the local moto server,
and runs the CSI mounter and node server with a publish, a kill -9 of the server and an adoption.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import pytest
import yaml
from mount_helpers import force_unmount, is_mounted, wait_until

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "image"
sys.path.insert(0, str(IMAGE))
import oci  # noqa: E402

LAYOUT = os.environ.get("CACHEFS_IMAGE_LAYOUT")
needs_image = pytest.mark.skipif(not LAYOUT, reason="make image-test (CACHEFS_IMAGE_LAYOUT) checks the built image")


def _build_sh_list(name: str) -> set[str]:
    m = re.search(rf'^{name}="([^"]*)"', (IMAGE / "build.sh").read_text(), re.M)
    return set(m.group(1).split())


def _dockerfile_list(name: str) -> set[str]:
    found = re.findall(rf'^ARG {name}="([^"]*)"', (IMAGE / "Dockerfile").read_text(), re.M)
    assert found, name
    assert len(set(found)) == 1, f"{name} differs between the Dockerfile's stages"
    return set(found[0].split())


def test_dockerfile_and_build_script_describe_one_image():
    for name in ("RUNTIME_PKGS", "BUILD_PKGS"):
        assert _dockerfile_list(name) == _build_sh_list(name), name
    assert {"fuse3", "python3", "tini", "libxxhash0"} <= _build_sh_list("RUNTIME_PKGS")
    docker = (IMAGE / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", docker, re.M) == ["debian:12-slim", "debian:12-slim"]
    config = json.loads((IMAGE / "config.json").read_text())
    assert re.search(r"^USER 65532:65532$", docker, re.M) and config["User"] == "65532:65532"
    assert "--uid 65532" in docker and re.search(r"^IMAGE_UID=65532\b", (IMAGE / "build.sh").read_text(), re.M)
    entry = json.loads(re.search(r"^ENTRYPOINT (.*)$", docker, re.M).group(1))
    assert entry == config["Entrypoint"] == ["/usr/bin/tini", "--", "/opt/cachefs/bin/cachefs"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["PATH"] in docker
    subprocess.run(["bash", "-n", str(IMAGE / "build.sh")], check=True)


def test_chart_image_defaults_to_what_make_image_tags():
    version = re.search(r'^version = "(.*)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    chart = yaml.safe_load((REPO / "helm" / "cachefs" / "Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "helm" / "cachefs" / "values.yaml").read_text())
    assert chart["appVersion"] == version               # the default tag: image.tag "" -> appVersion
    assert values["image"]["tag"] == "" and values["mounter"]["image"] == {"repository": "", "tag": ""}
    script = (IMAGE / "build.sh").read_text()
    assert f'IMAGE_NAME=${{IMAGE_NAME:-{values["image"]["repository"]}}}' in script


def test_makefile_has_the_image_targets():
    text = (REPO / "Makefile").read_text()
    assert re.search(r"^image:", text, re.M) and re.search(r"^image-test:", text, re.M)
    assert "image" not in re.search(r"^test:(.*)$", text, re.M).group(1)   # not part of make test


# ---------------------------------------------------------------- the OCI writer

def _tiny_rootfs(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o755)
    os.link(root / "bin" / "tool", root / "bin" / "tool-again")
    (root / "bin" / "sh-link").symlink_to("tool")
    (root / "etc").mkdir()
    (root / "etc" / "secret").write_text("x")
    (root / "etc" / "secret").chmod(0o600)
    for d in ("proc", "dev", "sys"):
        (root / d).mkdir()
    (root / "proc" / "junk").write_text("runtime provides this")
    os.mkfifo(root / "etc" / "fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "etc" / "sock"))
    s.close()


def test_oci_pack_and_unpack_round_trip(tmp_path):
    rootfs, layout, out = tmp_path / "rootfs", tmp_path / "oci", tmp_path / "out"
    _tiny_rootfs(rootfs)
    config = {"User": "65532:65532", "Entrypoint": ["/bin/tool"]}
    manifest = oci.pack(str(rootfs), str(layout), "1.0", config, name="example/cachefs")
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == ["1.0"]
    for blob in (layout / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    got = oci.unpack(str(layout), "1.0", str(out))
    assert got["config"]["Entrypoint"] == ["/bin/tool"] and got["os"] == "linux"
    assert (out / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((out / "bin" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "etc" / "secret").stat().st_mode) == 0o600
    assert (out / "bin" / "tool-again").stat().st_ino == (out / "bin" / "tool").stat().st_ino
    assert os.readlink(out / "bin" / "sh-link") == "tool"
    assert (out / "proc").is_dir() and not (out / "proc" / "junk").exists()
    assert not (out / "etc" / "fifo").exists() and not (out / "etc" / "sock").exists()

    # The same rootfs gives the same layer; a rebuilt tag replaces the old one and its blobs go.
    (rootfs / "etc" / "new").write_text("y")
    again = oci.pack(str(rootfs), str(layout), "1.0", config)
    assert again["layers"][0]["digest"] != manifest["layers"][0]["digest"]
    index = json.loads((layout / "index.json").read_text())
    assert len(index["manifests"]) == 1
    assert len(list((layout / "blobs" / "sha256").iterdir())) == 3       # manifest, config, layer
    first = oci.write_layer(str(rootfs), open(os.devnull, "wb"), mtime=0)
    second = oci.write_layer(str(rootfs), open(os.devnull, "wb"), mtime=0)
    assert first == second
    if shutil.which("skopeo"):                 # an independent reader of the layout
        r = subprocess.run(["skopeo", "inspect", f"oci:{layout}:1.0"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["Layers"] == [again["layers"][0]["digest"]]


# ---------------------------------------------------------------- the built image (make image-test)

class Chroot:
    """The image's rootfs unpacked from its layout, with /proc, /sys and /dev bound in."""

    def __init__(self, root: Path):
        self.root = root
        self.bound: list[Path] = []
        self.procs: list[subprocess.Popen] = []

    def __enter__(self):
        for d in ("proc", "sys", "dev"):
            subprocess.run(["mount", "--bind", f"/{d}", str(self.root / d)], check=True)
            self.bound.append(self.root / d)
        (self.root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
        return self

    def run(self, *argv: str, user: str | None = None, timeout: float = 120, env: dict | None = None):
        cmd = ["chroot"] + ([f"--userspec={user}"] if user else []) + [str(self.root), *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self._env(env))

    def start(self, *argv: str, log: Path) -> subprocess.Popen:
        with open(log, "a") as f:
            p = subprocess.Popen(["chroot", str(self.root), *argv], stdout=f, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=self._env(None))
        self.procs.append(p)
        return p

    @staticmethod
    def _env(extra: dict | None) -> dict:
        # What the image config sets, as a runtime would, and nothing of the host's environment.
        config = json.loads((IMAGE / "config.json").read_text())
        env = dict(e.split("=", 1) for e in config["Env"])
        return {**env, "HOME": "/root", **(extra or {})}

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        with open("/proc/self/mountinfo") as f:
            inside = [line.split()[4] for line in f if line.split()[4].startswith(str(self.root) + "/")]
        for point in sorted(inside, key=len, reverse=True):
            if Path(point) not in self.bound:          # a mount a test left behind
                force_unmount(point)
        for d in reversed(self.bound):
            subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture(scope="module")
def image_root():
    root = Path(tempfile.mkdtemp(prefix="cachefs-image-", dir="/var/tmp"))
    tag = json.loads((Path(LAYOUT) / "index.json").read_text())["manifests"][-1]["annotations"][
        "org.opencontainers.image.ref.name"]
    config = oci.unpack(LAYOUT, tag, str(root))
    yield root, config
    shutil.rmtree(root, ignore_errors=True)


@needs_image
def test_image_runs_cachefs(image_root):
    root, config = image_root
    assert config["config"]["User"] == "65532:65532"
    with Chroot(root) as c:
        r = c.run("cachefs", "--version", user="65532:65532")      # as the image's default user
        assert r.returncode == 0, r.stderr
        assert re.match(r"cachefs \d+\.\d+\.\d+ \(native block reader: native\)", r.stdout), r.stdout
        for argv in (["cachefs", "csi", "--help"], ["cachefs", "csi", "mounter", "--help"],
                     ["cachefs", "umount", "--help"], ["/usr/bin/tini", "--version"],
                     ["fusermount3", "--version"]):
            r = c.run(*argv)
            assert r.returncode == 0, (argv, r.stderr)
        assert "--mounter" in c.run("cachefs", "csi", "--help").stdout
        assert "cachefs:x:65532:65532:" in (root / "etc" / "passwd").read_text()


@needs_image
def test_image_mounts_a_bucket(image_root, moto_server, make_bucket):
    root, _ = image_root
    bucket = make_bucket("image", {"data/hello.txt": b"hello from the image\n"})
    (root / "creds.ini").write_text("[default]\naws_access_key_id = AKIACACHEFSTESTS0001\n"
                                    "aws_secret_access_key = cachefs-tests-secret-key-not-a-real-secret\n")
    (root / "creds.ini").chmod(0o600)
    mnt = root / "mnt" / "data"
    mnt.mkdir(parents=True, exist_ok=True)
    with Chroot(root) as c:
        r = c.run("cachefs", "mount", f"s3://{bucket}/data", "/mnt/data", "--endpoint-url",
                  moto_server.endpoint_url, "--region", "us-east-1", "--addressing-style", "path",
                  "--credentials-file", "/creds.ini", "--cache-dir", "/var/cache/t", "--cache-size", "64MiB",
                  "--metrics-addr", "none", "--read-only")
        assert r.returncode == 0, r.stderr
        try:
            assert (mnt / "hello.txt").read_bytes() == b"hello from the image\n"
        finally:
            r = c.run("cachefs", "umount", "/mnt/data")
        assert r.returncode == 0, r.stderr
        assert not is_mounted(mnt)


@needs_image
def test_image_csi_mounter_and_node_server(image_root, auth_moto):
    from cachefs.csi.proto import pb, rpc

    from .conftest import mount_capability
    root, _ = image_root
    logs = root / "var" / "log"
    target = root / "pods" / "p1" / "mount"
    target.parent.mkdir(parents=True, exist_ok=True)
    sock = root / "csi" / "csi.sock"
    # The node server as the chart runs it: root with every capability dropped.
    server_argv = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs",
                   "cachefs", "csi", "--mode", "node", "--endpoint", "unix:///csi/csi.sock", "--node-id", "n1",
                   "--mounter", "unix:///run/cachefs-csi/mounter.sock", "--state-dir", "/var/lib/cachefs-csi",
                   "--cache-root", "/var/lib/cachefs-csi/cache", "--cache-size", "64MiB",
                   "--endpoint-url", auth_moto.endpoint_url, "--region", "us-east-1", "--addressing-style", "path"]
    with Chroot(root) as c:
        mounter = c.start("cachefs", "csi", "mounter", "--socket", "unix:///run/cachefs-csi/mounter.sock",
                          log=logs / "mounter.log")
        server = c.start(*server_argv, log=logs / "node.log")
        channel = grpc.insecure_channel(f"unix://{sock}")
        grpc.channel_ready_future(channel).result(timeout=60)
        node = rpc.NodeStub(channel)
        req = pb.NodePublishVolumeRequest(
            volume_id=auth_moto.bucket, target_path="/pods/p1/mount", volume_capability=mount_capability(),
            readonly=True, secrets={"accessKeyID": auth_moto.key_id, "secretAccessKey": auth_moto.secret},
            volume_context={"bucket": auth_moto.bucket, "block_size": "256KiB"})
        node.NodePublishVolume(req)
        assert (target / "hello.txt").read_bytes() == b"hello\n"

        server.send_signal(signal.SIGKILL)                 # the node server's container restarts
        server.wait(10)
        channel.close()
        server = c.start(*server_argv, log=logs / "node.log")
        channel = grpc.insecure_channel(f"unix://{sock}")
        grpc.channel_ready_future(channel).result(timeout=60)
        assert wait_until(lambda: "adopted 1 mounts" in (logs / "node.log").read_text(), 20)
        assert mounter.poll() is None and (target / "hello.txt").read_bytes() == b"hello\n"
        rpc.NodeStub(channel).NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
            volume_id=auth_moto.bucket, target_path="/pods/p1/mount"))
        assert not is_mounted(target)
        channel.close()
        server.send_signal(signal.SIGTERM)
        mounter.send_signal(signal.SIGTERM)
        assert server.wait(20) == 0 and mounter.wait(40) == 0
    assert "Traceback" not in (logs / "mounter.log").read_text() + (logs / "node.log").read_text()
