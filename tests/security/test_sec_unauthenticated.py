"""Clients the broker does not let in: a key not in the authorized directory, and a
plaintext client talking to a CURVE listener.

Either one must get nothing past the failed ZMTP handshake from any kvlog process (the
broker, the node, the coordinator): the Python client raises UnauthenticatedError at once
(not after a timeout), a raw socket gets no reply at all, nothing is stored, no group is
created, and each process logs the refused key.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import zmq
from sectest_util import RawDealer, unique, wait_until

import kvlog
from kvlog.batch import build_batch
from kvlog.errors import UnauthenticatedError
from kvlog.types import TopicPartition

FAST_S = 5.0  # "at once": well under any request timeout (request.timeout.ms is 30 s)


@pytest.fixture(scope="module")
def topic(secured: Any) -> str:
    name = unique("authn")
    with secured.admin() as admin:
        admin.create_topic(name, 1)
    with kvlog.Producer(**secured.config("admin")) as producer:
        for i in range(5):
            producer.send(name, b"v%d" % i)
        producer.flush(30)
    return name


def _end_offset(secured: Any, topic: str) -> int:
    consumer = kvlog.Consumer(**secured.config("admin"))
    try:
        tp = TopicPartition(topic, 0)
        return consumer.end_offsets([tp])[tp]
    finally:
        consumer.close()


def _groups(secured: Any) -> set[str]:
    with secured.admin() as admin:
        return {g["group_id"] for g in admin.list_groups()}


def _batch(value: bytes = b"intruder") -> bytes:
    return build_batch([(None, value)])


def _requests_for(role: str, topic: str, group: str) -> list[tuple[str, dict[str, Any], list]]:
    """What an intruder would try at each kind of process."""
    if role == "broker":
        return [
            ("metadata", {}, []),
            ("find_coordinator", {"group_id": group}, []),
            ("create_topic", {"name": unique("intruder"), "partitions": 1}, []),
            ("init_producer_id", {}, []),
        ]
    if role.startswith("node"):
        return [
            ("produce", {"acks": 1, "partitions": [[topic, 0]]}, [_batch()]),
            (
                "fetch",
                {"max_wait_ms": 0, "partitions": [{"topic": topic, "partition": 0, "offset": 0}]},
                [],
            ),
            (
                "list_offsets",
                {"partitions": [{"topic": topic, "partition": 0, "timestamp": -1}]},
                [],
            ),
            ("ping", {}, []),
        ]
    return [
        (
            "join_group",
            {
                "group_id": group,
                "member_id": "",
                "protocol_type": "consumer",
                "session_timeout_ms": 10_000,
                "protocols": [["range", b""]],
            },
            [],
        ),
        ("metadata", {}, []),
        ("offset_fetch", {"group_id": group}, []),
        ("ping", {}, []),
    ]


def _intrude(endpoint: str, role: str, options: dict[int, Any], topic: str, group: str) -> None:
    """Send every request an intruder would try; assert the handshake failed and that
    nothing at all came back."""
    with RawDealer(endpoint, options) as raw:
        for op, fields, frames in _requests_for(role, topic, group):
            raw.send_request(op, fields, frames)
        assert raw.handshake_failed(FAST_S), (
            f"{role} at {endpoint}: no handshake failure reported (events {raw.events})"
        )
        got = raw.recv_all(1.0)
        assert got == [], f"{role} at {endpoint} answered a client it should not know: {got}"
        assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in raw.handshake_events()


# -- a key that is not authorized ----------------------------------------------------------


def test_unknown_key_cannot_list_topics(secured: Any, topic: str) -> None:
    with secured.admin("mallory") as admin:
        started = time.monotonic()
        with pytest.raises(UnauthenticatedError, match="refused this client's CURVE key"):
            admin.list_topics()
        assert time.monotonic() - started < FAST_S


def test_refused_client_keeps_failing_at_once(secured: Any, topic: str) -> None:
    with secured.admin("mallory", request_timeout_ms=1000) as admin:
        with pytest.raises(UnauthenticatedError):
            admin.list_topics()
        started = time.monotonic()
        with pytest.raises(UnauthenticatedError):
            admin.describe_cluster()  # a second call on the same client
        assert time.monotonic() - started < FAST_S


def test_unknown_key_cannot_consume(secured: Any, topic: str) -> None:
    consumer = kvlog.Consumer(**secured.config("mallory", auto_offset_reset="earliest"))
    try:
        started = time.monotonic()
        with pytest.raises(UnauthenticatedError):
            consumer.assign([TopicPartition(topic, 0)])
            for _ in range(20):
                records = consumer.poll(timeout_ms=200)
                assert not records, f"an unauthenticated consumer read {records}"
        assert time.monotonic() - started < FAST_S
    finally:
        consumer.close()


def test_unknown_key_cannot_join_a_group(secured: Any, topic: str) -> None:
    group = unique("intruders")
    consumer = kvlog.Consumer(
        topic, group_id=group, **secured.config("mallory", auto_offset_reset="earliest")
    )
    try:
        started = time.monotonic()
        with pytest.raises(UnauthenticatedError):
            for _ in range(20):
                records = consumer.poll(timeout_ms=200)
                assert not records, f"an unauthenticated group member read {records}"
        assert time.monotonic() - started < FAST_S
    finally:
        consumer.close()
    assert group not in _groups(secured)


def test_unauthenticated_producer_fails_at_once(secured: Any, topic: str) -> None:
    # (A plaintext producer takes the same path and fails the same way.)
    with kvlog.Producer(**secured.config("mallory"), max_block_ms=2000) as producer:
        started = time.monotonic()
        with pytest.raises(UnauthenticatedError):
            producer.send(topic, b"intruder").get(10)
        assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("role", ["broker", "node0", "coordinator"])
def test_unknown_key_gets_nothing_from_any_process(
    secured: Any, ring: Any, topic: str, role: str
) -> None:
    before = _end_offset(secured, topic)
    group = unique("raw-intruders")
    _intrude(secured.endpoints()[role], role, ring.curve("mallory"), topic, group)
    assert _end_offset(secured, topic) == before, "an unauthenticated produce was stored"
    assert group not in _groups(secured)


def test_refused_key_is_logged_by_every_process(secured: Any, ring: Any, topic: str) -> None:
    ring.create("eve", authorize=False)
    key = ring.public_z85("eve")
    for role, endpoint in secured.endpoints().items():
        _intrude(endpoint, role, ring.curve("eve"), topic, unique("g"))
    pids = secured.pids()

    def logged() -> bool:
        text = secured.log_text()
        lines = [line for line in text.splitlines() if key in line and "refused" in line]
        return all(
            any(f"{role}[{pids[role]}]" in line for line in lines)
            for role in ("broker", "node0", "coordinator")
        )

    wait_until(logged, 5.0, what=f"every process logging the refused key {key}")


# -- a plaintext client against the CURVE listener ---------------------------------------------


def test_plaintext_admin_is_refused_at_once(secured: Any, topic: str) -> None:
    with kvlog.Admin(bootstrap_servers=secured.bootstrap) as admin:
        started = time.monotonic()
        with pytest.raises(UnauthenticatedError):
            admin.list_topics()
        assert time.monotonic() - started < FAST_S


def test_plaintext_consumer_is_refused_at_once(secured: Any, topic: str) -> None:
    consumer = kvlog.Consumer(bootstrap_servers=secured.bootstrap, auto_offset_reset="earliest")
    try:
        started = time.monotonic()
        with pytest.raises(UnauthenticatedError):
            consumer.assign([TopicPartition(topic, 0)])
            for _ in range(20):
                records = consumer.poll(timeout_ms=200)
                assert not records, f"a plaintext consumer read {records}"
        assert time.monotonic() - started < FAST_S
    finally:
        consumer.close()


@pytest.mark.parametrize("role", ["broker", "node0", "coordinator"])
def test_plaintext_gets_nothing_from_any_process(secured: Any, topic: str, role: str) -> None:
    before = _end_offset(secured, topic)
    group = unique("plain-intruders")
    _intrude(secured.endpoints()[role], role, {}, topic, group)
    assert _end_offset(secured, topic) == before, "a plaintext produce was stored"
    assert group not in _groups(secured)


def test_authorized_client_still_works(secured: Any, ring: Any, topic: str) -> None:
    """The control: an authorized key does get answers, from every process."""
    for role, endpoint in secured.endpoints().items():
        with RawDealer(endpoint, ring.curve("admin")) as raw:
            reply = raw.request("ping", timeout_s=FAST_S)
            assert reply is not None and "error" not in reply, f"{role}: {reply}"
            assert zmq.EVENT_HANDSHAKE_SUCCEEDED in raw.handshake_events()
    with secured.admin("admin") as admin:
        assert topic in admin.list_topics()
    consumer = kvlog.Consumer(**secured.config("admin", auto_offset_reset="earliest"))
    try:
        consumer.assign([TopicPartition(topic, 0)])
        got: list[Any] = []
        deadline = time.monotonic() + 20
        while len(got) < 5 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(records)
        assert [r.value for r in got[:5]] == [b"v%d" % i for i in range(5)]
    finally:
        consumer.close()
