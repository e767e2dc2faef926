"""Helpers for the Kafka-wire security tests: a raw Kafka connection (kafka-python's
client-side protocol object over a socket, optionally TLS), a SCRAM login done by hand
(scramp's client), and client configurations of kafka-python and confluent-kafka."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import scramp

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from kafka.protocol.admin import DescribeAclsRequest
    from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest
    from kafka.protocol.parser import KafkaProtocol
    from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest

PASSWORDS = {"admin": "admin-secret", "alice": "alice-secret", "bob": "bob-secret"}

__all__ = [
    "ApiVersionsRequest",
    "DescribeAclsRequest",
    "MetadataRequest",
    "RawKafka",
    "SaslAuthenticateRequest",
    "SaslHandshakeRequest",
    "ScramLogin",
]


class RawKafka:
    """One connection to a Kafka listener; requests one at a time."""

    def __init__(
        self, address: str, *, tls: ssl.SSLContext | None = None, timeout_s: float = 15.0
    ) -> None:
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.sock: Any = tls.wrap_socket(sock, server_hostname=host) if tls else sock
        self.protocol = KafkaProtocol(client_id="kvlog-sec-test")

    def send(self, request: Any) -> Any:
        """The response; AssertionError when the connection closes first."""
        self.protocol.send_request(request)
        self.sock.sendall(self.protocol.send_bytes())
        while True:
            data = self.sock.recv(65536)
            assert data, "connection closed"
            responses = self.protocol.receive_bytes(data)
            if responses:
                return responses[0][1]

    def send_raw_token(self, token: bytes) -> bytes:
        """A bare SASL token (after SaslHandshake v0) and the bare answer."""
        self.sock.sendall(struct.pack(">i", len(token)) + token)
        head = self._recv_exactly(4)
        return self._recv_exactly(struct.unpack(">i", head)[0])

    def _recv_exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            assert chunk, "connection closed"
            out += chunk
        return out

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def closed_by_peer(self, timeout_s: float = 5.0) -> bool:
        """Whether the broker closed the connection (within ``timeout_s``)."""
        self.sock.settimeout(timeout_s)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawKafka:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ScramLogin:
    """The responses of a SCRAM login done by hand (SaslHandshake v1 + SaslAuthenticate)."""

    handshake: Any
    first: Any
    final: Any | None  # None: the first step failed

    @property
    def ok(self) -> bool:
        return self.final is not None and self.final.error_code == 0


def scram_login(
    raw: RawKafka, user: str, password: str, mechanism: str = "SCRAM-SHA-256"
) -> ScramLogin:
    handshake = raw.send(SaslHandshakeRequest(mechanism=mechanism, version=1))
    assert handshake.error_code == 0, handshake
    client = scramp.ScramClient([mechanism], user, password)
    first = raw.send(
        SaslAuthenticateRequest(auth_bytes=client.get_client_first().encode(), version=1)
    )
    if first.error_code:
        return ScramLogin(handshake, first, None)
    client.set_server_first(first.auth_bytes.decode())
    final = raw.send(
        SaslAuthenticateRequest(auth_bytes=client.get_client_final().encode(), version=1)
    )
    if final.error_code == 0:
        client.set_server_final(final.auth_bytes.decode())  # verifies the server's proof
    return ScramLogin(handshake, first, final)


def server_first_salt(auth_bytes: bytes) -> tuple[str, str]:
    """``(salt, iterations)`` of a SCRAM server-first message."""
    fields = dict(part.split("=", 1) for part in auth_bytes.decode().split(","))
    return fields["s"], fields["i"]


def kafka_python_config(
    address: str, user: str, password: str, mechanism: str = "SCRAM-SHA-256", **extra: Any
) -> dict[str, Any]:
    return {
        "bootstrap_servers": address,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": user,
        "sasl_plain_password": password,
        **extra,
    }


def confluent_config(
    address: str, user: str, password: str, mechanism: str = "SCRAM-SHA-256", **extra: Any
) -> dict[str, Any]:
    return {
        "bootstrap.servers": address,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
        **extra,
    }


def coordinator(b: Any) -> str:
    """The coordinator's Kafka address."""
    assert b.broker.kafka_plan is not None
    return b.broker.kafka_plan.coordinator.advertised


def listeners(b: Any) -> list[str]:
    """Every Kafka listener's address (broker, coordinator, and the nodes that serve
    Kafka's wire)."""
    assert b.broker.kafka_plan is not None
    out = []
    for address in b.broker.kafka_plan:
        try:
            socket.create_connection((address.advertised_host, address.port), 5).close()
        except ConnectionRefusedError:
            continue
        out.append(address.advertised)
    assert len(out) >= 2
    return out
