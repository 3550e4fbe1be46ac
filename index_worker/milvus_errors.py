"""How a Milvus failure is treated: a pure map from pymilvus exceptions (and raw gRPC errors) to transient,
transient-and-overloaded, or permanent, covering the codes of real Milvus (`merr`) and of Milvus Lite.

Why by code and not by exception class: pymilvus raises MilvusException for nearly everything; the server's
status code is the only stable signal. Milvus Lite 3.x reports schema/argument errors as 6 and anything
unexpected as 1 (which real Milvus uses for "service not ready"), so 1 is transient: bounded by retries.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from taskkit.errors import PermanentError, RateLimited, TransientError


class Kind(enum.Enum):
    TRANSIENT = "transient"
    OVERLOADED = "overloaded"  # transient, and the AIMD controller should slow down
    PERMANENT = "permanent"


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    code: int | str | None
    not_loaded: bool = False  # the collection must be loaded again (after a server restart)
    label: str = ""


# Real Milvus `pkg/util/merr/errors.go` (status.code); Milvus Lite `adapter/grpc/errors.py` notes beside.
TRANSIENT_CODES: dict[int, str] = {
    1: "service not ready (Milvus) / unexpected error (Milvus Lite)",
    2: "service unavailable (also pymilvus: cannot connect)",
    4: "request limit exceeded",
    5: "service internal error",
    11: "time tick long delay",
    12: "service resource insufficient",
    103: "collection not fully loaded",
    106: "collection on recovering",
    202: "partition not fully loaded",
    305: "resource group service available",
    401: "replica not available",
    503: "channel not available",
    504: "channel checkpoint exceeds max lag",
    601: "segment not loaded",
    902: "node offline",
    905: "node not available",
    1002: "IO unexpected EOF",
    1807: "HTTP rate limiter",
    2200: "inconsistent requery",
    10001: "timeout",
}
OVERLOADED_CODES: dict[int, str] = {
    3: "memory limit exceeded",
    7: "disk limit exceeded",
    8: "rate limit exceeded",
    9: "quota exceeded",
    1303: "deny to write (quota / write protection)",
}
NOT_LOADED_CODES: dict[int, str] = {
    101: "collection not loaded (both; Milvus Lite after a restart: state 'released')",
    201: "partition not loaded",
}
PERMANENT_CODES: dict[int, str] = {
    6: "illegal argument: schema, dimension, length, filter (Milvus Lite) / cross-cluster routing (Milvus)",
    10: "service unimplemented",
    100: "collection not found",
    105: "illegal collection schema",
    200: "partition not found",
    700: "index not found",
    701: "index type not supported",
    1100: "invalid parameter",
    1101: "missing parameter",
    1102: "parameter too large",
    1400: "not authenticated",
    1401: "privilege not permitted",
    1700: "field not found",
    1804: "invalid insert data",
}
# gRPC status names (pymilvus raises the RpcError itself, or a MilvusException whose code is the StatusCode).
TRANSIENT_GRPC = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "INTERNAL", "UNKNOWN", "CANCELLED"})
OVERLOADED_GRPC = frozenset({"RESOURCE_EXHAUSTED"})
PERMANENT_GRPC = frozenset(
    {"INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED",
     "FAILED_PRECONDITION", "OUT_OF_RANGE", "UNIMPLEMENTED"}
)


def _grpc_name(code: object) -> str | None:
    name = getattr(code, "name", None)  # grpc.StatusCode member
    return name if isinstance(name, str) else None


def classify(exc: BaseException) -> Verdict:
    """The treatment of `exc` raised by a pymilvus call (MilvusException, grpc.RpcError, or a timeout)."""
    code: object = None
    if callable(getattr(exc, "code", None)):  # grpc.RpcError: code() is a grpc.StatusCode
        code = exc.code()
    elif hasattr(exc, "code"):
        code = exc.code
    name = _grpc_name(code)
    if name is not None:
        if name in OVERLOADED_GRPC:
            return Verdict(Kind.OVERLOADED, name, label=name)
        if name in PERMANENT_GRPC:
            return Verdict(Kind.PERMANENT, name, label=name)
        return Verdict(Kind.TRANSIENT, name, label=name)
    if isinstance(exc, TimeoutError | ConnectionError | OSError):
        return Verdict(Kind.TRANSIENT, None, label=type(exc).__name__)
    if isinstance(code, int):
        if code in NOT_LOADED_CODES:
            return Verdict(Kind.TRANSIENT, code, not_loaded=True, label=NOT_LOADED_CODES[code])
        if code in OVERLOADED_CODES:
            return Verdict(Kind.OVERLOADED, code, label=OVERLOADED_CODES[code])
        if code in PERMANENT_CODES:
            return Verdict(Kind.PERMANENT, code, label=PERMANENT_CODES[code])
        if code in TRANSIENT_CODES:
            return Verdict(Kind.TRANSIENT, code, label=TRANSIENT_CODES[code])
        if getattr(exc, "is_input_error", False):
            return Verdict(Kind.PERMANENT, code, label="input error")
    if getattr(exc, "is_input_error", False):
        return Verdict(Kind.PERMANENT, code if isinstance(code, int) else None, label="input error")
    # Unknown: retry (bounded by the task's policy, then dead-lettered) rather than drop data on a guess.
    return Verdict(Kind.TRANSIENT, code if isinstance(code, int) else None, label="unclassified")


class MilvusTransient(TransientError):
    """Milvus failed in a way that may pass (unavailable, not ready, not loaded, timeout): retry with backoff."""

    def __init__(self, message: str, *, code: int | str | None = None, not_loaded: bool = False,
                 not_sent: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.not_loaded = not_loaded
        self.not_sent = not_sent  # the request surely never reached Milvus (store.py's reopen gate stopped it)


class MilvusOverloaded(RateLimited):
    """Milvus is out of memory, disk, quota or rate: retry later, and slow down (an AIMD signal)."""

    overloaded = True

    def __init__(self, message: str, *, code: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code


class MilvusPermanent(PermanentError):
    """Milvus refused the request itself (schema, parameter, dimension): retrying cannot help."""

    def __init__(self, message: str, *, code: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self):  # keep `code` through pickling (ARQ pickles a failed job's exception)
        return (_restore, (type(self), self.args, self.__dict__))


def _restore(cls, args, state):
    obj = Exception.__new__(cls)
    obj.args = args
    obj.__dict__.update(state)
    return obj


def to_task_error(exc: BaseException, operation: str) -> MilvusTransient | MilvusOverloaded | MilvusPermanent:
    """The taskkit error to raise for `exc` from Milvus `operation`, with a message a person can act on."""
    verdict = classify(exc)
    detail = getattr(exc, "message", None) or str(exc).splitlines()[0][:300]
    if callable(getattr(exc, "details", None)):  # grpc.RpcError
        detail = exc.details() or detail
    message = f"Milvus {operation} failed ({verdict.label}, code {verdict.code}): {detail}"
    if verdict.kind is Kind.OVERLOADED:
        return MilvusOverloaded(message, code=verdict.code)
    if verdict.kind is Kind.PERMANENT:
        return MilvusPermanent(message, code=verdict.code)
    return MilvusTransient(message, code=verdict.code, not_loaded=verdict.not_loaded)
