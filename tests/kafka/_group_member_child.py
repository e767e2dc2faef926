"""One consumer-group member in its own process, for tests that SIGKILL a member.

    python _group_member_child.py kp|ck BOOTSTRAP GROUP TOPIC CLIENT_ID

kafka-python (kp) or confluent-kafka (ck) joins GROUP, consumes TOPIC from the earliest
offset and, after every poll that returned records, prints what it consumed and then
commits it synchronously, printing the committed positions once the commit returned. It
also prints its assignment whenever it changes. One JSON object per stdout line. SIGTERM
closes it gracefully (LeaveGroup); SIGKILL is the crash under test.
"""

from __future__ import annotations

import json
import signal
import sys
import warnings
from typing import Any

stopping = False


def on_sigterm(signum: int, frame: object) -> None:
    global stopping
    stopping = True


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def run_kafka_python(bootstrap: str, group: str, topic: str, client_id: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id=client_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        max_poll_records=20,
    )
    assigned: list[int] = []
    while not stopping:
        batches = consumer.poll(timeout_ms=200)
        now = sorted(tp.partition for tp in consumer.assignment())
        if now != assigned:
            assigned = now
            say(assignment=now)
        records = [(tp.partition, r.offset) for tp, rs in batches.items() for r in rs]
        if records:
            say(consumed=records)
            consumer.commit()
            say(committed=_last_positions(records))
    consumer.close()
    say(closed=True)


def run_confluent(bootstrap: str, group: str, topic: str, client_id: str) -> None:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": client_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "partition.assignment.strategy": "range",
        }
    )
    consumer.subscribe([topic])
    assigned: list[int] = []
    while not stopping:
        messages = consumer.consume(20, 0.2)
        now = sorted(tp.partition for tp in consumer.assignment())
        if now != assigned:
            assigned = now
            say(assignment=now)
        records = [(m.partition(), m.offset()) for m in messages if m.error() is None]
        if records:
            say(consumed=records)
            consumer.commit(asynchronous=False)
            say(committed=_last_positions(records))
    consumer.close()
    say(closed=True)


def _last_positions(records: list[tuple[int, int]]) -> dict[str, int]:
    """The next offset to read per partition after these records (what was committed)."""
    positions: dict[str, int] = {}
    for partition, offset in records:
        positions[str(partition)] = max(positions.get(str(partition), 0), offset + 1)
    return positions


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_sigterm)
    library, bootstrap, group, topic, client_id = sys.argv[1:6]
    run = run_kafka_python if library == "kp" else run_confluent
    run(bootstrap, group, topic, client_id)
