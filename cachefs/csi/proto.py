"""The generated CSI messages and service stubs: `pb` (messages) and `rpc` (servicers, stubs)."""
from __future__ import annotations

import os
from typing import Any

from cachefs.csi import protogen

if protogen.is_stale():   # a source tree never built, or csi.proto edited since: compile in place
    try:
        protogen.compile_proto()
    except (ImportError, OSError, RuntimeError) as e:
        # An installed package that is read-only (or lacks grpcio-tools) uses what its build made.
        if not all(os.path.exists(os.path.join(protogen.HERE, n)) for n in protogen.OUTPUTS):
            raise ImportError("cachefs.csi needs its generated protobuf modules: reinstall the package "
                              "(pip install -e .), which compiles csi.proto with grpcio-tools") from e

from cachefs.csi import csi_pb2, csi_pb2_grpc  # noqa: E402

# protoc's modules make their classes at import time, out of a type checker's sight: Any to mypy.
pb: Any = csi_pb2
rpc: Any = csi_pb2_grpc

__all__ = ["pb", "rpc"]
