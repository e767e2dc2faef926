"""A transactional process for tests/broker/test_transactions.py, SIGKILLed at will.

``eos BOOTSTRAP IN OUT GROUP``: an exactly-once consume-transform-produce loop (read
committed input, each input record's value upper-cased into OUT, the group's offsets
committed with each transaction of up to 10 records); prints ``committed N`` after each
commit and exits once its partitions give nothing new for 3 s.

``open BOOTSTRAP OUT``: begins a transaction, sends 5 records, flushes, prints ``sent``
and waits to be killed (its transaction is left open: the coordinator times it out).
"""

from __future__ import annotations

import sys
import time

import kvlog


def eos(bootstrap: str, source: str, sink: str, group: str) -> None:
    consumer = kvlog.Consumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        # Static membership: a restarted instance takes its partitions back at once
        # rather than after the killed one's session runs out.
        group_instance_id=f"{group}-worker",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    producer = kvlog.Producer(
        bootstrap_servers=bootstrap, transactional_id=f"{group}-tx", linger_ms=0
    )
    producer.init_transactions()
    idle_since = time.monotonic()
    done = 0
    while time.monotonic() - idle_since < 3:
        polled = consumer.poll(200, max_records=10)
        if not consumer.assignment():
            idle_since = time.monotonic()  # still joining the group
        if not polled:
            continue
        idle_since = time.monotonic()
        producer.begin_transaction()
        offsets = {}
        for tp, records in polled.items():
            for r in records:
                producer.send(sink, r.value.upper(), key=r.key)
            offsets[tp] = records[-1].offset + 1
        producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
        producer.commit_transaction()
        done += sum(len(r) for r in polled.values())
        print(f"committed {done}", flush=True)
    producer.close()
    consumer.close(autocommit=False)


def left_open(bootstrap: str, sink: str) -> None:
    producer = kvlog.Producer(
        bootstrap_servers=bootstrap,
        transactional_id="left-open",
        transaction_timeout_ms=1500,
    )
    producer.init_transactions()
    producer.begin_transaction()
    for i in range(5):
        producer.send(sink, b"open-%d" % i, partition=0)
    producer.flush()
    print("sent", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    if sys.argv[1] == "eos":
        eos(*sys.argv[2:6])
    else:
        left_open(*sys.argv[2:4])
