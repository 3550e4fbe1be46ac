"""The Milvus error map (pure): codes of real Milvus and Milvus Lite, gRPC status codes, raw gRPC errors."""

from __future__ import annotations

import grpc
import pytest
from pymilvus.exceptions import MilvusException

from index_worker.milvus_errors import (
    Kind,
    MilvusOverloaded,
    MilvusPermanent,
    MilvusTransient,
    classify,
    to_task_error,
)
from taskkit.errors import PermanentError, RateLimited, TransientError


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "boom") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (1, Kind.TRANSIENT),  # Milvus: service not ready; Lite: unexpected
        (2, Kind.TRANSIENT),  # unavailable / pymilvus cannot connect
        (4, Kind.TRANSIENT),
        (103, Kind.TRANSIENT),
        (3, Kind.OVERLOADED),  # memory
        (7, Kind.OVERLOADED),  # disk
        (8, Kind.OVERLOADED),  # rate limit
        (9, Kind.OVERLOADED),  # quota
        (6, Kind.PERMANENT),  # Lite: illegal argument (dimension, length, filter)
        (100, Kind.PERMANENT),
        (105, Kind.PERMANENT),
        (1100, Kind.PERMANENT),
        (1102, Kind.PERMANENT),
        (65535, Kind.TRANSIENT),  # unknown: retried, bounded by the task policy
    ],
)
def test_codes(code: int, kind: Kind):
    assert classify(MilvusException(code, "x")).kind is kind


def test_not_loaded_is_transient_and_asks_for_a_reload():
    v = classify(MilvusException(101, "Collection 'c' is in state 'released'; call load()"))
    assert v.kind is Kind.TRANSIENT and v.not_loaded
    assert not classify(MilvusException(2, "x")).not_loaded


def test_input_error_flag_makes_an_unknown_code_permanent():
    assert classify(MilvusException(65535, "x", is_input_error=True)).kind is Kind.PERMANENT


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (grpc.StatusCode.UNAVAILABLE, Kind.TRANSIENT),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Kind.TRANSIENT),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Kind.OVERLOADED),
        (grpc.StatusCode.INVALID_ARGUMENT, Kind.PERMANENT),
        (grpc.StatusCode.UNIMPLEMENTED, Kind.PERMANENT),
    ],
)
def test_grpc_status_raw_and_wrapped(status: grpc.StatusCode, kind: Kind):
    assert classify(FakeRpcError(status)).kind is kind
    # pymilvus wraps an exhausted UNAVAILABLE retry as MilvusException(code=<StatusCode>)
    assert classify(MilvusException(status, "Retry timeout: 2s")).kind is kind


def test_python_timeout_is_transient():
    assert classify(TimeoutError()).kind is Kind.TRANSIENT


def test_task_errors_carry_the_class_and_a_readable_message():
    t = to_task_error(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), "upsert")
    assert isinstance(t, MilvusTransient) and isinstance(t, TransientError)
    assert "upsert" in str(t) and "Deadline Exceeded" in str(t)
    o = to_task_error(MilvusException(9, "quota exceeded"), "upsert")
    assert isinstance(o, MilvusOverloaded) and isinstance(o, RateLimited) and o.overloaded
    p = to_task_error(MilvusException(6, "vector field 'vector' expected dim 4, got 3"), "upsert")
    assert isinstance(p, MilvusPermanent) and isinstance(p, PermanentError) and "expected dim 4" in str(p)
    assert not isinstance(p, TransientError)


def test_task_errors_survive_pickling_with_their_code():
    import pickle

    for exc in (MilvusTransient("m", code=101, not_loaded=True), MilvusOverloaded("m", code=9), MilvusPermanent("m", code=6)):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == "m" and back.code == exc.code
    assert pickle.loads(pickle.dumps(MilvusTransient("m", code=101, not_loaded=True))).not_loaded
