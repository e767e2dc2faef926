"""A producing principal in a process of its own (no GIL shared with the test).

Usage: ``python _producer_child.py MODE CONFIG_JSON``; CONFIG holds the client config
(``client``), ``topic`` and ``value_size``. Results are JSON lines on stdout.

``flood``: produce as fast as the producer takes records until stdin closes; print
``{"ready": ...}`` once the first record is acknowledged. A ``pause`` line stops sending
(after a flush: nothing left in flight) and prints ``{"paused": ...}``; ``resume`` goes on
and prints ``{"resumed": ...}``. At the end (after a flush) it prints
``{"sent", "acked", "failed", "errors", "timeline"}`` where ``timeline`` holds
``[monotonic time, value bytes acknowledged so far]`` pairs (CLOCK_MONOTONIC is the same
clock in every process of the host, so the test can line it up with its own).

``steady``: for every ``run`` line on stdin, run the same workload (``rounds`` times: send
``per_round`` records, flush) and print ``{"records_per_s", "elapsed", "failed"}``; exit
when stdin closes.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from typing import Any

import kvlog


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def flood(producer: Any, topic: str, value: bytes) -> None:
    commands: queue.Queue[str] = queue.Queue()

    def read_commands() -> None:
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put("stop")

    threading.Thread(target=read_commands, daemon=True).start()
    lock = threading.Lock()
    state = {"acked": 0, "failed": 0, "bytes": 0}
    timeline: list[list[float]] = []
    errors: list[str] = []
    ready = threading.Event()

    def done(future: Any) -> None:
        with lock:
            if future.failed():
                state["failed"] += 1
                if len(errors) < 5:
                    errors.append(repr(future.exception()))
                return
            state["acked"] += 1
            state["bytes"] += len(value)
            if state["acked"] % 16 == 0 or not timeline:
                timeline.append([time.monotonic(), state["bytes"]])
        ready.set()

    sent = 0
    paused = False
    while True:
        try:
            command = commands.get(block=paused)
        except queue.Empty:
            command = ""
        if command == "stop":
            break
        if command == "pause":
            producer.flush(60)  # nothing of the flood left in flight
            paused = True
            emit({"paused": time.monotonic()})
            continue
        if command == "resume":
            paused = False
            emit({"resumed": time.monotonic()})
        producer.send(topic, value).add_done_callback(done)
        sent += 1
        if sent == 1:
            ready.wait(30)
            emit({"ready": time.monotonic()})
    producer.flush(60)
    with lock:
        timeline.append([time.monotonic(), state["bytes"]])
        emit({"sent": sent, **state, "errors": errors, "timeline": timeline})


def steady(producer: Any, topic: str, value: bytes, rounds: int, per_round: int) -> None:
    producer.send(topic, value).get(30)  # connected and warm
    for line in sys.stdin:
        if line.strip() != "run":
            continue
        failed = 0
        started = time.monotonic()
        for _ in range(rounds):
            futures = [producer.send(topic, value) for _ in range(per_round)]
            producer.flush(60)
            failed += sum(1 for f in futures if f.failed())
        elapsed = time.monotonic() - started
        emit(
            {
                "records_per_s": rounds * per_round / elapsed,
                "elapsed": elapsed,
                "started": started,
                "failed": failed,
            }
        )


def main() -> None:
    mode, config = sys.argv[1], json.loads(sys.argv[2])
    value = b"x" * config["value_size"]
    with kvlog.Producer(**config["client"]) as producer:
        if mode == "flood":
            flood(producer, config["topic"], value)
        else:
            steady(producer, config["topic"], value, config["rounds"], config["per_round"])


if __name__ == "__main__":
    main()
