"""The generated CSI messages and service stubs: `pb` (messages) and `rpc` (servicers, stubs)."""
from __future__ import annotations

import os

from cachefs.csi import protogen

if protogen.is_stale():   # a source tree never built, or csi.proto edited since: compile in place
    try:
        protogen.compile_proto()
    except (ImportError, OSError, RuntimeError) as e:
        # An installed package that is read-only (or lacks grpcio-tools) uses what its build made.
        if not all(os.path.exists(os.path.join(protogen.HERE, n)) for n in protogen.OUTPUTS):
            raise ImportError("cachefs.csi needs its generated protobuf modules: reinstall the package "
                              "(pip install -e .), which compiles csi.proto with grpcio-tools") from e

from cachefs.csi import csi_pb2 as pb  # noqa: E402
from cachefs.csi import csi_pb2_grpc as rpc  # noqa: E402

__all__ = ["pb", "rpc"]
