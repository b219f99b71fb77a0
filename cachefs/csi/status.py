"""gRPC status errors raised by the services and turned into the call's status at one place."""
from __future__ import annotations

import functools
import logging

import grpc

log = logging.getLogger(__name__)


class CsiError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# One constructor per status code the services answer with, e.g. `raise invalid("volume_id missing")`.
invalid = functools.partial(CsiError, grpc.StatusCode.INVALID_ARGUMENT)
not_found = functools.partial(CsiError, grpc.StatusCode.NOT_FOUND)
already_exists = functools.partial(CsiError, grpc.StatusCode.ALREADY_EXISTS)
aborted = functools.partial(CsiError, grpc.StatusCode.ABORTED)
failed_precondition = functools.partial(CsiError, grpc.StatusCode.FAILED_PRECONDITION)
out_of_range = functools.partial(CsiError, grpc.StatusCode.OUT_OF_RANGE)
unavailable = functools.partial(CsiError, grpc.StatusCode.UNAVAILABLE)
internal = functools.partial(CsiError, grpc.StatusCode.INTERNAL)


def require(request, *fields: str) -> None:
    """INVALID_ARGUMENT for the first required field that is empty (or, for a message, absent)."""
    for name in fields:
        value = getattr(request, name)
        present = request.HasField(name) if hasattr(value, "ByteSize") else bool(value)
        if not present:
            raise invalid(f"{name} missing")


def rpc_method(fn):
    """Map CsiError to its status; anything unexpected is INTERNAL with a logged traceback. Requests
    are never logged whole: they carry secrets."""
    @functools.wraps(fn)
    def wrapper(self, request, context):
        try:
            return fn(self, request, context)
        except CsiError as e:
            log.info("%s: %s %s", fn.__name__, e.code.name, e.message)
            context.abort(e.code, e.message)
        except Exception:
            log.exception("%s failed", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{fn.__name__}: internal error (see the driver log)")
    return wrapper
