"""A consumer process for the group integration tests (not a test module).

Run as ``python _group_child.py '<json spec>'``. It subscribes, polls in a loop and prints
one JSON object per line (flushed at once) for everything the parent checks: assignments
and revocations (from its ConsumerRebalanceListener), the records each poll() returned,
its commits, errors, and its membership state (unjoined, joining, stable) with its
generation when it changes. The parent may write commands to stdin: ``close`` (close the
consumer and exit), ``stall <ms>`` (stop polling that long).

Spec keys: bootstrap, group, topics or pattern, config (Consumer keyword arguments), name,
commit ("sync": commit what each poll returned; "none"), commit_upto (never commit past
this offset).
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from typing import Any

import kvlog
from kvlog.errors import KvlogError

MAX_LOOPS = 100_000  # a bound on the poll loop (about three hours at most)


def emit(**fields: Any) -> None:
    fields["t"] = time.monotonic()
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def tps(parts: Any) -> list[list[Any]]:
    return sorted([tp.topic, tp.partition] for tp in parts)


class Listener(kvlog.ConsumerRebalanceListener):
    def __init__(self, consumer_ref: list[Any]) -> None:
        self.ref = consumer_ref

    def _generation(self) -> int:
        group = self.ref[0]._group
        return -1 if group is None else group.generation

    def on_partitions_assigned(self, assigned: Any) -> None:
        emit(
            ev="assigned",
            tps=tps(assigned),
            gen=self._generation(),
            member=self.ref[0]._group.member_id,
        )

    def on_partitions_revoked(self, revoked: Any) -> None:
        emit(ev="revoked", tps=tps(revoked), gen=self._generation())

    def on_partitions_lost(self, lost: Any) -> None:
        emit(ev="lost", tps=tps(lost), gen=self._generation())


def commands() -> list[str]:
    out = []
    while select.select([sys.stdin], [], [], 0)[0]:
        line = sys.stdin.readline()
        if not line:
            return [*out, "close"]  # the parent went away
        out.append(line.strip())
    return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    ref: list[Any] = []
    consumer = kvlog.Consumer(
        bootstrap_servers=spec["bootstrap"], group_id=spec["group"], **spec.get("config", {})
    )
    ref.append(consumer)
    listener = Listener(ref)
    if spec.get("pattern"):
        consumer.subscribe(pattern=spec["pattern"], listener=listener)
    else:
        consumer.subscribe(spec["topics"], listener=listener)
    emit(ev="ready", pid=os.getpid())
    upto = spec.get("commit_upto")
    state = None
    for _ in range(MAX_LOOPS):
        if consumer._group.state.value != state:  # unjoined / joining / stable
            state = consumer._group.state.value
            emit(ev="state", state=state, gen=consumer._group.generation)
        for command in commands():
            if command == "close":
                consumer.close()
                emit(ev="closed")
                return
            if command.startswith("stall "):
                time.sleep(int(command.split()[1]) / 1000)
        try:
            batch = consumer.poll(timeout_ms=100)
        except KvlogError as exc:
            emit(ev="error", type=type(exc).__name__, message=exc.message)
            continue
        generation = consumer._group.generation
        for tp, records in batch.items():
            emit(
                ev="records",
                tp=[tp.topic, tp.partition],
                gen=generation,
                offsets=[r.offset for r in records],
            )
        if batch and spec.get("commit") == "sync":
            offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
            if upto is not None:
                offsets = {tp: min(o, upto) for tp, o in offsets.items()}
            try:
                consumer.commit(offsets)
            except KvlogError as exc:
                emit(ev="error", type=type(exc).__name__, message=exc.message)
                continue
            emit(ev="committed", offsets=[[tp.topic, tp.partition, o] for tp, o in offsets.items()])
    consumer.close()


if __name__ == "__main__":
    main()
