"""Small security checks without a mount: the runtime directory, the metrics address, the fault proxy's parser."""
from __future__ import annotations

import os
import stat

import pytest

from cachefs.devtools.faultrules import Fault, classify
from cachefs.errors import UserError
from cachefs.ipc import private_dir
from cachefs.metrics import _is_loopback


def test_runtime_dir_of_another_user_is_refused(tmp_path):
    d = tmp_path / "cachefs"
    d.mkdir(mode=0o700)
    if os.getuid() != 0:
        pytest.skip("needs root to give the directory away")
    os.chown(d, 65534, 65534)
    with pytest.raises(UserError, match="not a directory owned by uid"):
        private_dir(str(d))


def test_runtime_dir_symlink_is_refused_and_loose_mode_tightened(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    real.chmod(0o755)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UserError):
        private_dir(str(tmp_path / "link"))
    private_dir(str(real))
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o700


def test_loopback_addresses():
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("10.1.2.3")


@pytest.mark.parametrize("method, path, query, headers, op", [
    ("GET", "/b/k", "", {}, "get"), ("HEAD", "/b/k", "", {}, "head"), ("GET", "/b", "list-type=2", {}, "list"),
    ("PUT", "/b/k", "", {}, "put"), ("PUT", "/b/k", "partNumber=1&uploadId=x", {}, "upload_part"),
    ("PUT", "/b/k", "", {"x-amz-copy-source": "b/j"}, "copy"), ("POST", "/b/k", "uploads", {}, "create_multipart"),
    ("POST", "/b/k", "uploadId=x", {}, "complete_multipart"), ("DELETE", "/b/k", "uploadId=x", {}, "abort_multipart"),
    ("DELETE", "/b/k", "", {}, "delete"), ("GET", "/", "", {}, "list_buckets"),
])
def test_fault_proxy_classifies_s3_operations(method, path, query, headers, op):
    import urllib.parse
    assert classify(method, path, urllib.parse.parse_qs(query, keep_blank_values=True), headers)[0] == op


def test_fault_specs():
    f = Fault.parse("error:ops=get+head,status=503,code=SlowDown,p=0.5,count=3,skip=1,key=^data/")
    assert (f.action, f.status, f.code, f.probability, f.count, f.skip) == ("error", 503, "SlowDown", 0.5, 3, 1)
    assert f.matches("head", "data/x") and not f.matches("put", "data/x") and not f.matches("get", "other")
    assert Fault.parse("reset:ops=write").matches("upload_part", "k")
    for bad in ("explode", "error:ops=fly", "error:colour=red"):
        with pytest.raises(ValueError):
            Fault.parse(bad)
