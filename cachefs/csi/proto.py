"""The generated CSI messages and service stubs: `pb` (messages) and `rpc` (servicers, stubs)."""
from __future__ import annotations

from . import protogen

if protogen.is_stale():   # a source tree that was never built: compile once, in place
    try:
        protogen.compile_proto()
    except ImportError as e:
        raise ImportError("cachefs.csi needs its generated protobuf modules: reinstall the package "
                          "(pip install -e .), which compiles csi.proto with grpcio-tools") from e

from . import csi_pb2 as pb  # noqa: E402
from . import csi_pb2_grpc as rpc  # noqa: E402

__all__ = ["pb", "rpc"]
