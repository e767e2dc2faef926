"""Per-principal byte-rate quotas throttle a flooding producer without failing it or
starving other principals; the in-flight cap refuses a flooding client without harming
the node.

The flooding principal (``alice``) and the well-behaved one (``bob``) each run in a
process of their own (:mod:`_producer_child`), so the GIL of the test process cannot
distort what is measured. bob's workload is latency-bound (send a few records, flush,
repeat) and far below the quota, so what it measures is how promptly the node serves
bob while alice floods.
"""

from __future__ import annotations

import json
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sectest_util import (
    HERE,
    RawDealer,
    await_topic_acl,
    start_secured_broker,
    stop_and_check,
    unique,
)

import kvlog
from kvlog.batch import build_batch, read_header
from kvlog.errors import ErrorCode
from kvlog.types import TopicPartition

QUOTA = 2 << 20  # quota.producer.byte.rate, bytes/s
FLOOD_VALUE = 1000
FLOOD_BATCH = 256 << 10
FLOOD_WINDOW_S = 2.5  # alice's rate is measured over this long
STEADY = {"value_size": 100, "rounds": 60, "per_round": 10}  # far below the quota
PAIRS = 8
ROUNDS = 3
CHILD = HERE / "_producer_child.py"


@pytest.fixture(scope="module")
def quota_broker(tmp_path_factory: pytest.TempPathFactory, ring: Any) -> Iterator[Any]:
    b = start_secured_broker(
        Path(tmp_path_factory.mktemp("quota")),
        ring,
        config={"quota.producer.byte.rate": QUOTA, "quota.consumer.byte.rate": QUOTA},
        log_level="WARNING",
    )
    try:
        yield b
    finally:
        stop_and_check(b)


def _topic_for(broker: Any, principal: str) -> str:
    name = unique(f"quota-{principal}")
    with broker.admin() as admin:
        admin.create_topic(name, 1)
        admin.add_acl(principal, "topic", name, "write")
    await_topic_acl(broker, principal, name)
    return name


class Child:
    """A _producer_child process: JSON lines out, commands in."""

    def __init__(self, mode: str, config: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), mode, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self, timeout_s: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        assert ready, f"child {self.proc.args[2]} said nothing within {timeout_s} s"
        line = self.proc.stdout.readline()
        assert line, f"child exited with {self.proc.wait()}"
        return json.loads(line)

    def finish(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Close stdin (the child's stop signal) and read its last line, if any."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            last = self.read(timeout_s)
        finally:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return last

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _rate_between(timeline: list[list[float]], start: float, end: float) -> float:
    """Bytes/s acknowledged between ``start`` and ``end`` (monotonic), from the timeline."""
    inside = [(t, b) for t, b in timeline if start <= t <= end]
    assert len(inside) >= 2, f"too few acknowledgements in [{start}, {end}]: {inside}"
    (t0, b0), (t1, b1) = inside[0], inside[-1]
    return (b1 - b0) / (t1 - t0)


def _median_ratio(pairs: list[tuple[float, float]]) -> float:
    return statistics.median(during / alone for alone, during in pairs)


def test_quota_slows_a_flood_without_failing_it_or_starving_others(
    quota_broker: Any,
) -> None:
    """alice floods (a bulk producer: full 256 KiB batches) while bob runs a fixed,
    latency-bound workload. bob's runs come in pairs, one with alice paused (nothing of
    hers in flight) and one with her flooding, back to back (in alternating order) so that
    the load of a shared machine hits both alike; a round's figure is the median of its
    pairs' ratios, and the best of up to ROUNDS rounds counts. alice's rate is measured
    over a steady stretch after her first second (the bucket starts full)."""
    flood_topic = _topic_for(quota_broker, "alice")
    steady_topic = _topic_for(quota_broker, "bob")
    steady = Child(
        "steady",
        {"client": quota_broker.config("bob", linger_ms=0), "topic": steady_topic, **STEADY},
    )
    flood = Child(
        "flood",
        {
            "client": quota_broker.config(
                "alice", batch_size=FLOOD_BATCH, buffer_memory=2 * FLOOD_BATCH, linger_ms=5
            ),
            "topic": flood_topic,
            "value_size": FLOOD_VALUE,
        },
    )
    rounds: list[list[tuple[float, float]]] = []  # (alone, during) records/s per pair
    try:

        def run() -> float:
            steady.send("run")
            result = steady.read()
            assert result["failed"] == 0
            return float(result["records_per_s"])

        def alone() -> float:
            flood.send("pause")
            flood.read()
            rate = run()
            flood.send("resume")
            flood.read()
            time.sleep(0.15)  # what the pause saved up goes through unthrottled first
            return rate

        steady_from = flood.read()["ready"] + 1.5  # the first second of quota is spent
        steady_until = steady_from + FLOOD_WINDOW_S
        time.sleep(max(0.0, steady_until - time.monotonic()))
        for _ in range(ROUNDS):
            pairs = []
            for i in range(PAIRS):
                if i % 2:
                    pairs.append((alone(), run()))
                else:
                    during = run()
                    pairs.append((alone(), during))
            rounds.append(pairs)
            if _median_ratio(pairs) >= 0.8:
                break
        result = flood.finish()
    finally:
        flood.kill()
        steady.kill()
    flood_rate = _rate_between(result["timeline"], steady_from, steady_until)
    best = max(rounds, key=_median_ratio)
    figures = (
        f"bob records/s (alone, during the flood) per pair: "
        f"{[(round(a), round(d)) for a, d in best]}; median ratio per round "
        f"{[f'{_median_ratio(r):.0%}' for r in rounds]}; flood {flood_rate / 1024:.0f} "
        f"KiB/s vs quota {QUOTA // 1024} KiB/s"
    )
    print(figures)
    assert result["failed"] == 0, f"flood records failed: {result['errors']}"
    assert result["acked"] == result["sent"]
    assert 0.5 * QUOTA <= flood_rate <= 1.5 * QUOTA, figures
    assert _median_ratio(best) >= 0.8, f"the flood cost bob more than 20%: {figures}"
    # Every acknowledged flood record is in the log, once.
    consumer = kvlog.Consumer(**quota_broker.config("admin"))
    try:
        tp = TopicPartition(flood_topic, 0)
        assert consumer.end_offsets([tp])[tp] == result["acked"]
    finally:
        consumer.close()


def test_throttled_produce_replies_carry_throttle_time(quota_broker: Any, ring: Any) -> None:
    topic = _topic_for(quota_broker, "carol")
    batch = build_batch([(None, b"y" * 1000)] * 250)  # ~250 kB
    node = quota_broker.endpoints()["node0"]
    replies = []
    with RawDealer(node, ring.curve("carol")) as raw:
        sent = 0
        while sent < 2 * QUOTA:
            started = time.monotonic()
            reply = raw.request(
                "produce", {"acks": 1, "partitions": [[topic, 0]]}, [batch], timeout_s=30
            )
            assert reply is not None, "a throttled produce was never answered"
            replies.append((reply, time.monotonic() - started))
            sent += len(batch)
    for reply, _ in replies:
        assert "error" not in reply, reply
        assert [r["error"] for r in reply["results"]] == [0], reply
        assert isinstance(reply.get("throttle_time_ms"), int), reply
    throttled = [(r["throttle_time_ms"], waited) for r, waited in replies if r["throttle_time_ms"]]
    assert replies[0][0]["throttle_time_ms"] == 0, "the first second of quota is free"
    assert len(throttled) >= len(replies) // 3, [r["throttle_time_ms"] for r, _ in replies]
    # The node really held those replies back for about that long.
    for throttle_ms, waited in throttled:
        assert waited >= 0.8 * throttle_ms / 1000, (throttle_ms, waited)
    # An unthrottled principal's replies say 0.
    with RawDealer(node, ring.curve("admin")) as raw:
        reply = raw.request("produce", {"acks": 1, "partitions": [[topic, 0]]}, [batch])
    assert reply is not None and reply["throttle_time_ms"] == 0, reply


def test_throttled_fetch_replies_carry_throttle_time(quota_broker: Any, ring: Any) -> None:
    topic = unique("quota-fetch")
    with quota_broker.admin() as admin:
        admin.create_topic(topic, 1)
        admin.add_acl("carol", "topic", topic, "read")
    value = b"f" * 1000
    count = 3 * QUOTA // len(value) // 2  # 1.5 s of quota
    with kvlog.Producer(**quota_broker.config("admin", batch_size=256 << 10)) as producer:
        for _ in range(count):
            producer.send(topic, value)
        producer.flush(60)
    await_topic_acl(quota_broker, "carol", topic)
    replies = []
    offset = read = 0
    with RawDealer(quota_broker.endpoints()["node0"], ring.curve("carol")) as raw:
        while True:
            fetch = {"max_wait_ms": 0, "partitions": [
                {"topic": topic, "partition": 0, "offset": offset, "max_bytes": 256 << 10}
            ]}  # fmt: skip
            started = time.monotonic()
            answer = raw.call("fetch", fetch, timeout_s=30)
            assert answer is not None, "a throttled fetch was never answered"
            reply, frames = answer
            assert "error" not in reply, reply
            replies.append((reply, time.monotonic() - started))
            entry = reply["partitions"][0]
            assert entry["error"] == 0, entry
            if not entry["bases"]:
                break
            read += sum(read_header(frame).record_count for frame in frames)
            offset = entry["bases"][-1] + read_header(frames[-1]).last_offset_delta + 1
    assert read == count, "a throttled fetch lost or repeated records"
    assert all(isinstance(r.get("throttle_time_ms"), int) for r, _ in replies), replies[:3]
    throttled = [(r["throttle_time_ms"], waited) for r, waited in replies if r["throttle_time_ms"]]
    assert replies[0][0]["throttle_time_ms"] == 0, "the first second of quota is free"
    assert throttled, f"fetching 1.5 s of quota was never throttled: {len(replies)} replies"
    for throttle_ms, waited in throttled:
        assert waited >= 0.8 * throttle_ms / 1000, (throttle_ms, waited)


# -- max.inflight.requests.per.client -------------------------------------------------------------


@pytest.fixture(scope="module")
def capped_broker(tmp_path_factory: pytest.TempPathFactory, ring: Any) -> Iterator[Any]:
    b = start_secured_broker(
        Path(tmp_path_factory.mktemp("inflight")),
        ring,
        config={"max.inflight.requests.per.client": 2},
        log_level="WARNING",
    )
    try:
        yield b
    finally:
        stop_and_check(b)


def test_inflight_cap_refuses_a_flooding_client_and_the_node_stays_healthy(
    capped_broker: Any, ring: Any
) -> None:
    topic = unique("capped")
    with capped_broker.admin() as admin:
        admin.create_topic(topic, 1)
    pids = capped_broker.pids()
    node = capped_broker.endpoints()["node0"]
    tp = TopicPartition(topic, 0)
    with RawDealer(node, ring.curve("admin")) as polls:
        # Long polls park at the node: two fit, the rest are refused at once.
        fetch = {"max_wait_ms": 20_000, "partitions": [{"topic": topic, "partition": 0,
                                                        "offset": 0}]}  # fmt: skip
        ids = [polls.send_request("fetch", fetch) for _ in range(6)]
        refused = []
        for _ in range(4):
            reply = polls.recv(2.0)
            assert reply is not None, f"refusals expected at once, got {refused}"
            refused.append(reply[0])
        assert [r["error"] for r in refused] == [ErrorCode.THROTTLING_QUOTA_EXCEEDED] * 4
        assert {r["id"] for r in refused} == set(ids[2:])
        assert "max.inflight.requests.per.client" in refused[0]["message"]
        # The two parked polls are still served: a record wakes them at once.
        with kvlog.Producer(**capped_broker.config("admin")) as producer:
            producer.send(topic, b"wake").get(10)
        woken = [polls.recv(5.0) for _ in range(2)]
        assert all(w is not None for w in woken), "the parked fetches were not answered"
        assert {w[0]["id"] for w in woken if w} == set(ids[:2])
        assert all(w[0]["partitions"][0]["bases"] == [0] for w in woken if w)
    with RawDealer(node, ring.curve("admin")) as flood:
        # Pipelined produce requests: those over the cap are refused, none is lost or
        # left unanswered.
        batch = build_batch([(None, b"z" * 100)])
        sent = [
            flood.send_request("produce", {"acks": 1, "partitions": [[topic, 0]]}, [batch])
            for _ in range(300)
        ]
        answers: dict[int, dict[str, Any]] = {}
        while len(answers) < len(sent):
            reply = flood.recv(10.0)
            assert reply is not None, f"{len(sent) - len(answers)} requests unanswered"
            answers[reply[0]["id"]] = reply[0]
    assert set(answers) == set(sent)
    throttled = [
        a for a in answers.values() if a.get("error") == ErrorCode.THROTTLING_QUOTA_EXCEEDED
    ]
    stored = [a for a in answers.values() if "results" in a and a["results"][0]["error"] == 0]
    assert throttled, "300 pipelined produce requests never met the cap of 2"
    assert len(throttled) + len(stored) == len(sent), list(answers.values())[:5]
    # The node stays healthy: same process, and a normal client works at once.
    assert capped_broker.pids() == pids
    with kvlog.Producer(**capped_broker.config("admin")) as producer:
        futures = [producer.send(topic, b"after-%d" % i) for i in range(100)]
        producer.flush(30)
        assert all(f.succeeded() for f in futures), [f.exception() for f in futures][:3]
    consumer = kvlog.Consumer(**capped_broker.config("admin", auto_offset_reset="earliest"))
    try:
        assert consumer.end_offsets([tp])[tp] == 1 + len(stored) + 100
    finally:
        consumer.close()
    assert capped_broker.pids() == pids
