"""ipc/endpoint_health.py without sockets: monitor events in, verdicts out."""

from __future__ import annotations

import zmq

from kvlog.errors import NetworkError, UnauthenticatedError
from kvlog.ipc.endpoint_health import EndpointHealth, HandshakeRefused, Lost, RefusedConnectionError

EP = "tcp://127.0.0.1:1"


def _event(
    health: EndpointHealth, kind: int, now: float = 0.0, *, fail_fast: bool = False
) -> object:
    return health.on_event(EP, kind, 0, now, closing=False, fail_fast_waiting=lambda: fail_fast)


def test_a_dropped_connection_is_lost_then_down_until_a_handshake() -> None:
    health = EndpointHealth("test")
    assert _event(health, zmq.EVENT_DISCONNECTED) is None  # never connected: stale
    assert _event(health, zmq.EVENT_HANDSHAKE_SUCCEEDED) is None
    verdict = _event(health, zmq.EVENT_DISCONNECTED)
    assert isinstance(verdict, Lost) and not verdict.refused
    assert isinstance(verdict.error, NetworkError)
    health.forget_socket(EP)
    health.mark_down(EP, verdict.refused)
    assert health.is_down(EP) and not health.is_refused(EP)
    assert _event(health, zmq.EVENT_HANDSHAKE_SUCCEEDED) is None
    assert not health.is_down(EP)


def test_a_refused_connection_fails_only_fail_fast_requests() -> None:
    health = EndpointHealth("test")
    assert _event(health, zmq.EVENT_CONNECT_RETRIED, 5.0) is None
    assert health.is_down(EP) and health.is_refused(EP)
    assert health.unreachable_since([EP]) == 5.0
    verdict = _event(health, zmq.EVENT_CONNECT_RETRIED, 6.0, fail_fast=True)
    assert isinstance(verdict, Lost) and verdict.refused
    assert isinstance(verdict.error, RefusedConnectionError)
    assert health.unreachable_since([EP]) == 5.0  # since the first refusal
    assert health.unreachable_since([EP, "tcp://127.0.0.1:2"]) is None  # one not tried


def test_a_connection_made_then_lost_is_not_a_refusal() -> None:
    health = EndpointHealth("test")
    assert _event(health, zmq.EVENT_CONNECTED) is None
    assert _event(health, zmq.EVENT_CONNECT_RETRIED, fail_fast=True) is None
    assert health.is_down(EP) and not health.is_refused(EP)


def test_handshake_failures() -> None:
    health = EndpointHealth("test")
    verdict = _event(health, zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    assert isinstance(verdict, HandshakeRefused)
    assert isinstance(verdict.error, UnauthenticatedError) and "CURVE key" in verdict.error.message
    # Ambiguous failures: a server dying mid-connect fails one; three in a row refuse.
    assert _event(health, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL) is None
    assert _event(health, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL) is None
    verdict = _event(health, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    assert isinstance(verdict, HandshakeRefused) and "keeps failing" in verdict.error.message
