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


def invalid(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.NOT_FOUND, message)


def already_exists(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.ALREADY_EXISTS, message)


def aborted(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.ABORTED, message)


def failed_precondition(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.FAILED_PRECONDITION, message)


def internal(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.INTERNAL, message)


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
