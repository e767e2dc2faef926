"""Node-side Kafka throughput with raw requests (not a test): what one node process does
with Kafka Produce and Fetch when the client costs nothing.

    PYTHONPATH=$PWD python tests/kafka/bench_node_kafka.py [records] [batch]

Produce: RecordBatch v2 requests of ``batch`` 100-byte records (16-byte keys), built
once by kafka-python's builder and sent pipelined (5 in flight, acks=-1), each with its
own idempotent sequence. Fetch: the same partition read back through Kafka's Fetch v11
(stored Kafka batches: 12 bytes put back, no conversion), then a partition of the same
records written by kvlog's producer (native batches, converted per batch in C). Prints
records/s for each. Set KVLOG_PROFILE_DIR to cProfile the node while it runs.
"""

from __future__ import annotations

import socket
import struct
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kafka.protocol.parser import KafkaProtocol
from node_kafka_util import create_topic, fetch, node_address, produce, record_set

import kvlog

IN_FLIGHT = 5


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(min(1 << 20, n - len(out)))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return bytes(out)


def _frames(requests: list[Any]) -> list[bytes]:
    out = []
    for i, request in enumerate(requests):
        request.with_header(correlation_id=i, client_id="bench")
        out.append(bytes(request.encode(header=True, framed=True)))
    return out


def bench_produce(address: str, topic: str, records: int, batch: int) -> float:
    value, key = b"v" * 100, b"k" * 16
    requests = []
    for seq in range(0, records, batch):
        raw = record_set([value] * batch, keys=[key] * batch, producer=(1, 0, seq))
        requests.append(produce(8, [(topic, 0, raw)]))
    frames = _frames(requests)
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pending: deque[int] = deque()
    started = time.perf_counter()
    sent = 0
    while sent < len(frames) or pending:
        while sent < len(frames) and len(pending) < IN_FLIGHT:
            sock.sendall(frames[sent])
            pending.append(sent)
            sent += 1
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        _recv_exact(sock, size)
        pending.popleft()
    took = time.perf_counter() - started
    sock.close()
    return len(frames) * batch / took


def bench_fetch(address: str, topic: str, records: int) -> float:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)))
    protocol = KafkaProtocol(client_id="bench")
    offset = 0
    got_bytes = 0
    started = time.perf_counter()
    while offset < records:
        protocol.send_request(fetch(11, [(topic, 0, offset)], partition_max_bytes=8 << 20))
        sock.sendall(protocol.send_bytes())
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        body = _recv_exact(sock, size)
        [(_, response)] = protocol.receive_bytes(struct.pack(">i", size) + body)
        part = response.responses[0].partitions[0]
        raw = part.records
        got_bytes += len(raw)
        # Walk the batch headers only (base offset, length, last offset delta).
        pos = 0
        while pos + 12 <= len(raw):
            base, length = struct.unpack_from(">qi", raw, pos)
            (delta,) = struct.unpack_from(">i", raw, pos + 23)
            offset = base + delta + 1
            pos += 12 + length
    took = time.perf_counter() - started
    sock.close()
    return records / took


def main() -> None:
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    with tempfile.TemporaryDirectory() as data_dir:
        broker = kvlog.Broker(data_dir, "tcp://127.0.0.1:0", kafka_listen="127.0.0.1:0")
        with broker:
            address = node_address(broker)
            create_topic(broker, "kafka-batches")
            create_topic(broker, "native-batches")
            rate = bench_produce(address, "kafka-batches", records, batch)
            print(f"Kafka produce, {batch}-record batches, acks=-1: {rate:,.0f} records/s")
            producer = kvlog.Producer(bootstrap_servers=broker.bootstrap, linger_ms=5)
            value, key = b"v" * 100, b"k" * 16
            for _ in range(records):
                producer.send("native-batches", value, key=key, partition=0)
            producer.flush()
            producer.close()
            for topic in ("kafka-batches", "native-batches"):
                rate = bench_fetch(address, topic, records)
                print(f"Kafka fetch of {topic}: {rate:,.0f} records/s")


if __name__ == "__main__":
    main()
