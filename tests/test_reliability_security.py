"""Security properties of a running mount (docs/SECURITY.md): credentials never leak; the metrics and
control endpoints are loopback / owner-only; cache directories are 0700; allow_other comes with
default_permissions."""
from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import urllib.request
import uuid
from pathlib import Path

import pytest
from mount_helpers import free_closed_port_url, mount_entries, object_bytes, read_all, run_cachefs

from cachefs.devtools.faultproxy import Fault

pytestmark = pytest.mark.timeout(180)

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"      # one that user nobody may run (the venv's lives under /root)
OBJECTS = {"a.bin": object_bytes("sec-a", 300_000), "dir/b.txt": b"b\n", "private.bin": b"secret data\n"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def all_cmdlines() -> bytes:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    out.append(f.read())
            except OSError:
                pass
    return b"\n".join(out)


def files_under(root: Path) -> bytes:
    blobs = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if os.path.isfile(p) and not p.endswith(".mdb") and "/blocks/" not in p:
                with open(p, "rb") as f:
                    blobs.append(f.read())
    return b"\n".join(blobs)


def test_the_secret_never_shows(mounter, make_bucket, fault_proxy, tmp_path, auth_moto):
    canary = f"canary-{uuid.uuid4().hex}-secret"
    name = make_bucket("security", OBJECTS)
    port = free_port()
    env = mounter.env(AWS_SECRET_ACCESS_KEY=canary)
    m = mounter.mount(name, "--log-level", "debug", "--metrics-addr", f"127.0.0.1:{port}",
                      "--s3-read-deadline", "2", endpoint_url=fault_proxy.url, env=env)
    pid = m.pid()
    with open(f"/proc/{pid}/environ", "rb") as f:
        assert canary.encode() in f.read(), "the grep below could not find the secret even where it is"

    outputs: list[str] = []
    assert read_all(m / "a.bin") == OBJECTS["a.bin"]
    os.listdir(m.path)
    with fault_proxy.fault(Fault("error", ops="get", status=500)):     # errors, retries, EIO, warnings
        with pytest.raises(OSError) as e:
            read_all(m / "dir/b.txt")
        outputs.append(str(e.value))
    with fault_proxy.outage("reset"):
        with pytest.raises(OSError):
            read_all(m / "private.bin")
    for args in (["stats", str(m.path)], ["stats", "--json", str(m.path)]):
        res = run_cachefs(args, env)
        assert res.returncode == 0, res.describe()
        outputs += [res.stdout, res.stderr]
    outputs.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
    # start-up errors: an unreachable endpoint, and credentials S3 refuses
    bad = run_cachefs(["mount", f"s3://{name}", str(mounter.fresh_dir("mnt")), "--endpoint-url",
                       free_closed_port_url(), "--cache-dir", str(mounter.fresh_dir("cache"))], env, timeout_s=60)
    refused_env = mounter.env(AWS_ACCESS_KEY_ID=auth_moto.key_id, AWS_SECRET_ACCESS_KEY=canary)
    refused = run_cachefs(["mount", f"s3://{auth_moto.bucket}", str(mounter.fresh_dir("mnt")), "--endpoint-url",
                           auth_moto.endpoint_url, "--addressing-style", "path", "--region", "us-east-1",
                           "--cache-dir", str(mounter.fresh_dir("cache"))], refused_env, timeout_s=60)
    assert bad.returncode != 0 and refused.returncode != 0, (bad.describe(), refused.describe())
    assert "credentials" in refused.stderr, refused.describe()
    outputs += [bad.stdout, bad.stderr, refused.stdout, refused.stderr]

    places = {
        "argv of every process": all_cmdlines(),
        "daemon log": m.log_path.read_bytes(),
        "files in the cache directory": files_under(m.cache_dir),
        "mount table": Path("/proc/self/mountinfo").read_bytes(),
        "outputs and error messages": "\n".join(outputs).encode(),
        "mount registry": files_under(Path("/run/cachefs")) if os.getuid() == 0 else b"",
    }
    assert len(places["daemon log"]) > 1000 and b"DEBUG" in places["daemon log"]
    assert b"cachefs_s3_requests" in places["outputs and error messages"]
    leaks = [where for where, blob in places.items() if canary.encode() in blob]
    assert leaks == [], f"the secret shows in: {leaks}"


def test_credentials_file_secret_is_masked_in_logs(mounter, make_bucket, tmp_path):
    canary = f"filecanary-{uuid.uuid4().hex}"
    creds = tmp_path / "creds"
    creds.write_text(f"[default]\naws_access_key_id = AKIAFILECANARY\naws_secret_access_key = {canary}\n")
    creds.chmod(0o600)
    env = {k: v for k, v in mounter.env().items() if not k.startswith("AWS_SECRET") and k != "AWS_ACCESS_KEY_ID"}
    m = mounter.mount(make_bucket("security-file", OBJECTS), "--credentials-file", str(creds),
                      "--log-level", "debug", env=env)
    assert read_all(m / "dir/b.txt") == b"b\n"
    assert canary not in m.log_text() and canary.encode() not in all_cmdlines()
    creds.chmod(0o644)                         # a file others can read is refused, naming the fix
    res = run_cachefs(["mount", m.url, str(mounter.fresh_dir("mnt")), "--endpoint-url", mounter.endpoint_url,
                       "--credentials-file", str(creds), "--cache-dir", str(mounter.fresh_dir("cache"))], env)
    assert res.returncode == 1 and "chmod 600" in res.stderr and canary not in res.stderr, res.describe()


def listening_addresses(pid: int) -> list[str]:
    """host:port of the TCP sockets the process listens on (from /proc/net/tcp{,6})."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:          # LISTEN
                    host, port = cols[1].split(":")
                    found.append(f"{bytes.fromhex(host)[::-1].hex() if table == 'tcp' else host}:{int(port, 16)}")
    return found


def test_endpoints_are_loopback_and_owner_only(mounter, make_bucket):
    m = mounter.mount(make_bucket("security-endpoints", OBJECTS), "--metrics-addr", f":{free_port()}")
    stats = m.stats()
    assert stats["metrics_url"].startswith("http://127.0.0.1:"), stats["metrics_url"]
    listening = listening_addresses(m.pid())
    assert listening and all(a.startswith("7f000001:") for a in listening), listening   # 127.0.0.1 only
    sock = stats["control_socket"]
    st, dst = os.stat(sock), os.stat(os.path.dirname(sock))
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
    assert stat.S_IMODE(dst.st_mode) == 0o700
    # another user cannot reach it
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1]); print('connected')\nexcept OSError as e:\n    print(e.errno)")
    out = subprocess.run([SYSTEM_PYTHON, "-c", probe, sock], capture_output=True, text=True, user=NOBODY,
                         group=NOBODY, timeout=30).stdout.strip()
    assert out == str(errno.EACCES), out


def test_cache_directories_are_private(mounter, make_bucket, tmp_path):
    log_file = tmp_path / "logs" / "cachefs.log"
    log_file.parent.mkdir()
    m = mounter.mount(make_bucket("security-dirs", OBJECTS), "--cache", f"ssd:{tmp_path / 'ssd'}:64MiB",
                      "--log-file", str(log_file))
    assert read_all(m / "a.bin") == OBJECTS["a.bin"]
    dirs = [m.cache_dir, tmp_path / "ssd"]
    for root in list(dirs):
        for dirpath, dirnames, _ in os.walk(root):
            dirs += [Path(dirpath) / d for d in dirnames]
    loose = [f"{d} {stat.S_IMODE(os.stat(d).st_mode):04o}" for d in dirs if stat.S_IMODE(os.stat(d).st_mode) & 0o077]
    assert len(dirs) > 256 and loose == [], loose[:10]
    assert stat.S_IMODE(os.stat(log_file).st_mode) == 0o600


def test_allow_other_comes_with_default_permissions(mounter, make_bucket):
    public = Path(tempfile.mkdtemp(prefix="cachefs-sec-", dir="/tmp"))    # a mount point nobody can reach
    public.chmod(0o755)
    (public / "mnt").mkdir()
    try:
        m = mounter.mount(make_bucket("security-other", OBJECTS), "--allow-other", "--file-mode", "0640",
                          mountpoint=public / "mnt")
        options = mount_entries(m.real_path)[0].split(" - ")[1].split()[2].split(",")
        assert "allow_other" in options and "default_permissions" in options, options

        def as_nobody(*argv: str) -> subprocess.CompletedProcess:
            return subprocess.run(list(argv), capture_output=True, text=True, user=NOBODY, group=NOBODY, timeout=30)
        listing = as_nobody("ls", str(m.path))                  # allow_other: other users see the mount
        assert listing.returncode == 0 and "a.bin" in listing.stdout, listing.stderr
        reader = as_nobody("cat", str(m / "a.bin"))             # default_permissions: the kernel checks 0640
        assert reader.returncode != 0 and "Permission denied" in reader.stderr, reader.stderr
        assert read_all(m / "a.bin") == OBJECTS["a.bin"]          # the owner reads it
    finally:
        for mnt in mounter.mounts:
            if str(mnt.path).startswith(str(public)):
                mounter.umount(mnt) if mount_entries(mnt.real_path) else None
        shutil.rmtree(public, ignore_errors=True)
