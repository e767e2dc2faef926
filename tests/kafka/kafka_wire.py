"""Raw Kafka requests for the tests: kafka-python's own client-side protocol object over
a socket (framing, correlation ids, decoding), so a test can send any version."""

from __future__ import annotations

import socket
from typing import Any

from kafka.protocol.parser import KafkaProtocol


class RawClient:
    """One connection to a Kafka listener; requests one at a time."""

    def __init__(self, address: str, client_id: str = "kvlog-test") -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=15)
        self.protocol = KafkaProtocol(client_id=client_id)

    def send(self, request: Any) -> Any:
        self.protocol.send_request(request)
        self.sock.sendall(self.protocol.send_bytes())
        while True:
            data = self.sock.recv(65536)
            assert data, "connection closed"
            responses = self.protocol.receive_bytes(data)
            if responses:
                return responses[0][1]

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
