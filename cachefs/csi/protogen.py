"""Compile csi.proto into csi_pb2.py / csi_pb2_grpc.py with grpcio-tools.

Called by setup.py's build step (so an installed package ships the generated modules) and, as a
fallback, on first import from a source tree that was never built (a plain `git clone` on PYTHONPATH).
"""
from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "csi.proto")
OUTPUTS = ("csi_pb2.py", "csi_pb2_grpc.py")


def is_stale(out_dir: str = HERE) -> bool:
    if not os.path.exists(PROTO):
        # An installed wheel ships the generated modules without the .proto: nothing to compare.
        return not all(os.path.exists(os.path.join(out_dir, n)) for n in OUTPUTS)
    src = os.path.getmtime(PROTO)
    for name in OUTPUTS:
        path = os.path.join(out_dir, name)
        if not os.path.exists(path) or os.path.getmtime(path) < src:
            return True
    return False


def compile_proto(out_root: str | None = None) -> None:
    """Generate into `out_root`/cachefs/csi (default: this source tree). The proto is compiled under its
    package path so that the generated gRPC module imports `cachefs.csi.csi_pb2`, not a top-level
    `csi_pb2` that would only work with this directory on sys.path."""
    import importlib.resources

    from grpc_tools import protoc

    src_root = os.path.dirname(os.path.dirname(HERE))
    out_root = out_root or src_root
    os.makedirs(os.path.join(out_root, "cachefs", "csi"), exist_ok=True)
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    rc = protoc.main(["grpc_tools.protoc", f"-I{src_root}", f"-I{well_known}",
                      f"--python_out={out_root}", f"--grpc_python_out={out_root}",
                      os.path.join("cachefs", "csi", "csi.proto")])
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed on {PROTO} (exit {rc})")


if __name__ == "__main__":
    compile_proto()
