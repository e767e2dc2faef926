"""The internal op ``kafka_relay`` (real processes): a node hands the coordinator a Kafka
request its client sent it, with the principal its listener authenticated, and the
coordinator answers it as that principal would be answered on its own listener. Only
kvlog's own processes may relay (a client could otherwise claim any principal)."""

from __future__ import annotations

import struct
import warnings
from typing import Any

from sectest_util import RawDealer, SecuredBroker, unique, wait_until

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from kafka.protocol.metadata import MetadataRequest
    from kafka.protocol.parser import KafkaProtocol


def relay(dealer: RawDealer, principal: str, request: Any) -> tuple[dict[str, Any], Any]:
    """Send ``request`` through kafka_relay as ``principal``; (reply header, response)."""
    protocol = KafkaProtocol(client_id="relayed-client")
    protocol.send_request(request)
    framed = protocol.send_bytes()
    reply = dealer.call(
        "kafka_relay", {"principal": principal, "client_host": "10.1.2.3"}, [framed[4:]]
    )
    assert reply is not None, "no reply"
    header, frames = reply
    if "error" in header:
        return header, None
    [frame] = frames
    [(_, response)] = protocol.receive_bytes(struct.pack(">i", len(frame)) + frame)
    return header, response


def test_a_relayed_request_is_answered_as_its_principal(sasl: SecuredBroker) -> None:
    topic = unique("relayed")
    with sasl.admin() as admin:
        admin.create_topic(topic)
        admin.add_acl("alice", "topic", topic, "describe")
    coordinator = sasl.endpoints()["coordinator"]
    with RawDealer(coordinator, sasl.ring.curve("server")) as internal:

        def visible(principal: str) -> list[Any]:
            _, response = relay(internal, principal, MetadataRequest(topics=[topic], version=4))
            return [t for t in response.topics if t.error_code == 0]

        wait_until(lambda: visible("alice"), 10, what="alice's describe ACL at the coordinator")
        # bob may not describe it: Kafka's answer, by name, is TOPIC_AUTHORIZATION_FAILED.
        _, response = relay(internal, "bob", MetadataRequest(topics=[topic], version=4))
        assert [(t.name, t.error_code) for t in response.topics] == [(topic, 29)]
    # A client (even a super user) may not relay: it could claim any principal.
    with RawDealer(coordinator, sasl.ring.curve("admin")) as admin_dealer:
        header, _ = relay(admin_dealer, "alice", MetadataRequest(topics=[topic], version=4))
        assert header["error"] == 31 and "internal ops" in header["message"]
    # Garbage frames are refused, and the coordinator serves on.
    with RawDealer(coordinator, sasl.ring.curve("server")) as internal:
        for frame in (b"", b"\x00\x03\x00\x04\x00\x00\x00\x01\xff\xff", b"\x7f\x7f" + b"\x00" * 12):
            reply = internal.call("kafka_relay", {"principal": "alice"}, [frame])
            assert reply is not None and reply[0]["error"] in (35, 42), reply
        assert visible("alice")
