"""The relay a node uses for what the coordinator answers (workers/kafka_relay.py), in one
process: a request relayed to a real KafkaListener comes back as its response; a target
that is unknown, refuses, closes or never answers fails the request (its client's
connection then closes)."""

from __future__ import annotations

import select
import socket
import time
from typing import Any

from kafka.protocol.metadata import ApiVersionsRequest

from kvlog.ipc.kafka.api_versions import api_versions_response
from kvlog.ipc.kafka.codec import ApiKey
from kvlog.ipc.kafka.connection import KafkaConnection, KafkaRequest
from kvlog.workers.kafka_listener import KafkaListener
from kvlog.workers.kafka_relay import KafkaRelay


def api_versions_request(correlation_id: int = 9) -> KafkaRequest:
    request = ApiVersionsRequest(version=2)
    request.with_header(correlation_id=correlation_id, client_id="client")
    conn = KafkaConnection()
    conn.receive_data(bytes(request.encode(header=True, framed=True)))
    event = conn.next_event()
    assert isinstance(event, KafkaRequest)
    return event


class Outcomes:
    def __init__(self) -> None:
        self.delivered: list[tuple[Any, Any]] = []
        self.failed: list[tuple[Any, str]] = []

    def relay(self, **kw: Any) -> KafkaRelay:
        return KafkaRelay(
            "test",
            lambda t, r: self.delivered.append((t, r)),
            lambda t, why: self.failed.append((t, why)),
            **kw,
        )


def pump(*parts: Any, until: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not until() and time.monotonic() < deadline:
        for part in parts:
            part.on_ready()
        time.sleep(0.002)
    assert until(), "nothing happened in time"


def test_a_relayed_request_comes_back_as_its_response() -> None:
    served: list[int] = []

    def on_api_versions(request: KafkaRequest, token: Any) -> Any:
        served.append(request.correlation_id)
        return api_versions_response(request)

    listener = KafkaListener({ApiKey.ApiVersions: on_api_versions}, port=0)
    host, port = listener.start()
    seen = Outcomes()
    relay = seen.relay()
    try:
        for i in range(3):
            relay.forward(f"token-{i}", api_versions_request(100 + i), f"{host}:{port}")
        pump(listener, relay, until=lambda: len(seen.delivered) == 3)
        assert [t for t, _ in seen.delivered] == ["token-0", "token-1", "token-2"]
        assert all(r.error_code == 0 and r.api_keys for _, r in seen.delivered)
        assert served == [1, 2, 3], "the relay's own correlation ids"
        assert not seen.failed
    finally:
        relay.close()
        listener.close()


def test_an_unknown_or_refusing_target_fails_at_once() -> None:
    seen = Outcomes()
    relay = seen.relay()
    relay.forward("a", api_versions_request(), None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]  # nothing listens there once closed
    relay.forward("b", api_versions_request(), f"127.0.0.1:{free}")
    pump(relay, until=lambda: len(seen.failed) == 2)
    assert [t for t, _ in seen.failed] == ["a", "b"]
    assert "not known" in seen.failed[0][1]
    relay.close()


def test_a_target_that_closes_or_stays_silent_fails_its_requests() -> None:
    now = [0.0]
    seen = Outcomes()
    relay = seen.relay(timeout_s=5.0, clock=lambda: now[0])
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = f"127.0.0.1:{server.getsockname()[1]}"
        relay.forward("silent", api_versions_request(), address)
        conn, _ = server.accept()
        pump(relay, until=lambda: bool(select.select([conn], [], [], 0)[0]))
        assert conn.recv(4096), "the request reached the target"
        assert not seen.failed
        now[0] = 4.9
        relay.expire()
        assert not seen.failed
        now[0] = 5.0
        relay.expire()
        assert [t for t, _ in seen.failed] == ["silent"] and "no response" in seen.failed[0][1]
        conn.close()
        relay.forward("closed", api_versions_request(), address)
        again, _ = server.accept()
        again.close()
        pump(relay, until=lambda: len(seen.failed) == 2)
        assert seen.failed[1][0] == "closed"
    relay.close()
