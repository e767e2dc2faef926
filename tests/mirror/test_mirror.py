"""``kvlog mirror`` between two kvlog instances, through the Kafka protocol: a migration
with a consumer group moved half-way, records copied as they were, a mirror restarted,
retention held back while the target is away (and, with --allow-gaps, skipped), the
status it reports, and mirrors run by ``kvlog serve`` (the supervisor)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from mirror_util import FixedBroker, end_offsets, read_all, strip_marker, wait_until

import kvlog
from kvlog.tools.cli import main
from kvlog.types import TopicPartition
from kvlog.workers.mirror_files import read_status
from kvlog.workers.mirror_model import GROUP_PREFIX, MirrorSpec, Rename
from kvlog.workers.mirror_shell import Mirror

RECORDS = 100_000
PARTITIONS = 3


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    config = {"log.retention.check.interval.ms": 300, "group.initial.rebalance.delay.ms": 0}
    with kvlog.Broker(
        tmp_path_factory.mktemp("source"), "tcp://127.0.0.1:0", console_listen="none", config=config
    ) as b:
        yield b


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FixedBroker]:
    broker = FixedBroker(
        tmp_path_factory.mktemp("target"), config={"group.initial.rebalance.delay.ms": 0}
    ).start()
    try:
        yield broker
    finally:
        broker.stop()


def _spec(source: Any, target: str, state_dir: Path, **fields: Any) -> MirrorSpec:
    return MirrorSpec(
        name=fields.pop("name", "test"),
        target=target,
        source=source.bootstrap,
        state_dir=str(state_dir),
        **fields,
    )


def test_a_migration_moves_a_group_that_reads_exactly_the_second_half(
    source: Any, target: FixedBroker, tmp_path: Path
) -> None:
    topic = "orders"
    admin = kvlog.Admin(bootstrap_servers=source.bootstrap)
    admin.create_topic(topic, partitions=PARTITIONS, config={"retention.ms": 604_800_000})
    with kvlog.Producer(bootstrap_servers=source.bootstrap, batch_size=65_536) as producer:
        for start in range(0, RECORDS, 10_000):
            producer.send_batch(
                topic,
                [b"order %d" % i for i in range(start, start + 10_000)],
                keys=[b"customer-%d" % (i % 977) for i in range(start, start + 10_000)],
            )
        producer.flush(60)
    # The group reads about half on kvlog, commits, and stops.
    consumer = kvlog.Consumer(
        topic,
        bootstrap_servers=source.bootstrap,
        group_id="billing",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=2_000,
    )
    read = 0
    deadline = time.monotonic() + 60
    while read < RECORDS // 2 and time.monotonic() < deadline:
        read += sum(len(r) for r in consumer.poll(timeout_ms=1_000).values())
    consumer.commit()
    consumer.close()
    committed = admin.list_group_offsets("billing")
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    assert sum(committed.values()) == read >= RECORDS // 2
    on_source = read_all(source.bootstrap, tps)

    spec = _spec(
        source,
        target.kafka,
        tmp_path / "state",
        topics="orders",
        groups="billing",
        until_caught_up=True,
    )
    assert Mirror(spec).run() == 0

    # Records copied as they were: partition, order, key, value, timestamp, headers.
    on_target = read_all(target.bootstrap, tps)
    for tp in tps:
        assert [(r.key, r.value, r.timestamp) for r in on_target[tp]] == [
            (r.key, r.value, r.timestamp) for r in on_source[tp]
        ]
    # The group, moved to the target (a Kafka-mode client), reads exactly the rest.
    moved = kvlog.Consumer(
        topic,
        bootstrap_servers=target.kafka,
        group_id="billing",
        auto_offset_reset="earliest",  # were the offsets not translated, it would read all
        session_timeout_ms=6_000,
    )
    got: list[tuple[int, int, bytes]] = []
    try:
        deadline = time.monotonic() + 60
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 4:
            batch = moved.poll(timeout_ms=500)
            if batch:
                quiet_since = time.monotonic()
            got += [(r.partition, r.offset, r.value) for rs in batch.values() for r in rs]
    finally:
        moved.close()
    expected = [
        (tp.partition, r.offset, r.value)
        for tp in tps
        for r in on_source[tp]
        if r.offset >= committed[tp]
    ]
    assert sorted(got) == sorted(expected)
    assert len(got) == RECORDS - read
    # The mirror's progress is committed on the source, as a retention hold.
    progress = admin.list_group_offsets(GROUP_PREFIX + "test")
    assert progress == {tp: len(on_source[tp]) for tp in tps}
    admin.close()


def test_records_keep_headers_and_renamed_topics_and_a_restart_continues(
    source: Any, target: FixedBroker, tmp_path: Path
) -> None:
    admin = kvlog.Admin(bootstrap_servers=source.bootstrap)
    admin.create_topic("sensors.temp", partitions=2)
    tps = [TopicPartition("sensors.temp", p) for p in range(2)]
    with kvlog.Producer(bootstrap_servers=source.bootstrap) as producer:
        for i in range(300):
            headers = [("unit", b"celsius")] if i % 3 == 0 else None
            producer.send("sensors.temp", value=b"%d" % i, key=b"s%d" % (i % 7), headers=headers)
    spec = _spec(
        source,
        target.kafka,
        tmp_path / "state",
        name="site42",
        topics=r"sensors\..*",
        renames=[Rename.parse(r"sensors\.(.*)=site42.sensors.\1")],
        until_caught_up=True,
    )
    assert Mirror(spec).run() == 0
    with kvlog.Producer(bootstrap_servers=source.bootstrap) as producer:
        for i in range(300, 500):
            producer.send("sensors.temp", value=b"%d" % i, key=b"s%d" % (i % 7))
    assert Mirror(spec).run() == 0  # the second run goes on where the first stopped
    renamed = [TopicPartition("site42.sensors.temp", p) for p in range(2)]
    on_source = read_all(source.bootstrap, tps)
    on_target = read_all(target.bootstrap, renamed)
    for tp, copy in zip(tps, renamed, strict=True):
        assert [(r.key, r.value, r.timestamp, list(r.headers)) for r in on_source[tp]] == [
            (r.key, r.value, r.timestamp, strip_marker(r.headers)) for r in on_target[copy]
        ]
    described = kvlog.Admin(bootstrap_servers=target.kafka).describe_topic("site42.sensors.temp")
    assert len(described.partitions) == 2
    admin.close()


def test_retention_is_held_while_the_target_is_away(source: Any, tmp_path: Path) -> None:
    """The target is down from the start: the mirror holds retention on what it has not
    forwarded, says so in `kvlog mirror status`, and forwards it all once the target is
    up; then retention goes on. A mirror with --allow-gaps holds nothing: what expires is
    skipped, counted and logged."""
    admin = kvlog.Admin(bootstrap_servers=source.bootstrap)
    admin.create_topic("appliance", partitions=1, config={"retention.ms": 2_000})
    admin.create_topic("appliance.gaps", partitions=1, config={"retention.ms": 2_000})
    target = FixedBroker(tmp_path / "target")  # not started yet: the link is down
    # Retries back off to 1 s at most (10 s by default): the link's return is noticed soon.
    held = _spec(
        source,
        target.kafka,
        tmp_path / "held",
        name="held",
        topics="appliance",
        backoff_max_ms=1_000,
    )
    gaps = _spec(
        source,
        target.kafka,
        tmp_path / "gaps",
        name="gaps",
        topics=r"appliance\.gaps",
        allow_gaps=True,
        backoff_max_ms=1_000,
    )
    mirrors = [Mirror(held), Mirror(gaps)]
    import threading

    threads = [threading.Thread(target=m.run, daemon=True) for m in mirrors]
    for t in threads:
        t.start()
    tp, gap_tp = TopicPartition("appliance", 0), TopicPartition("appliance.gaps", 0)
    try:
        wait_until(
            lambda: (
                admin.list_group_offsets(GROUP_PREFIX + "held")
                and admin.list_group_offsets(GROUP_PREFIX + "gaps")
            ),
            30,
            "the mirrors' first commits",
        )
        old = int(time.time() * 1000) - 3_600_000  # an hour old: past retention.ms at once
        with kvlog.Producer(bootstrap_servers=source.bootstrap) as producer:
            for topic in ("appliance", "appliance.gaps"):
                producer.send_batch(topic, [b"r%d" % i for i in range(50)], timestamp_ms=old)
            producer.flush(30)
        consumer = kvlog.Consumer(bootstrap_servers=source.bootstrap)
        wait_until(
            lambda: consumer.beginning_offsets([gap_tp])[gap_tp] == 50, 30, "retention to run"
        )
        assert consumer.beginning_offsets([tp])[tp] == 0  # held: nothing deleted
        status = wait_until(
            lambda: (s := read_status(tmp_path / "held")) and s.get("lag_records") == 50 and s,
            30,
            "the status to show the lag",
        )
        assert status["target_reachable"] is False and status["state"] == "waiting"
        assert status["max_age_ms"] >= 3_600_000
        out = CliRunner().invoke(main, ["mirror", "status", "--state-dir", str(tmp_path / "held")])
        assert out.exit_code == 0, out.output
        assert "UNREACHABLE" in out.output and "lag 50 record(s)" in out.output
        target.start()  # the link is back
        wait_until(
            lambda: end_offsets(target.bootstrap, [tp]) == {tp: 50}, 60, "the backlog forwarded"
        )
        wait_until(
            lambda: consumer.beginning_offsets([tp])[tp] == 50, 30, "retention after forwarding"
        )
        status = wait_until(
            lambda: (s := read_status(tmp_path / "gaps")) and s.get("gaps") == 50 and s,
            60,
            "the gap counted",
        )
        assert status["target_reachable"] is True
        consumer.close()
    finally:
        for m in mirrors:
            m.stop()
        for t in threads:
            t.join(30)
        target.stop()
        admin.close()


def test_kvlog_serve_runs_mirrors_from_a_config_file_and_restarts_them(
    target: FixedBroker, tmp_path: Path
) -> None:
    config = tmp_path / "mirror.toml"
    config.write_text(f'[[mirror]]\nname = "central"\nto = "{target.kafka}"\ntopics = "fleet"\n')
    from kvlog.tools.serve import load_mirror_config

    with kvlog.Broker(
        tmp_path / "data",
        "tcp://127.0.0.1:0",
        console_listen="none",
        mirrors=load_mirror_config(config),
    ) as broker:
        admin = kvlog.Admin(bootstrap_servers=broker.bootstrap)
        admin.create_topic("fleet", partitions=1)
        tp = TopicPartition("fleet", 0)
        with kvlog.Producer(bootstrap_servers=broker.bootstrap) as producer:
            producer.send_batch("fleet", [b"a%d" % i for i in range(100)]).get(30)
        wait_until(lambda: end_offsets(target.bootstrap, [tp]) == {tp: 100}, 60, "forwarding")
        [pid] = [p["pid"] for p in broker.processes() if p["role"] == "mirror"]
        os.kill(pid, signal.SIGKILL)
        with kvlog.Producer(bootstrap_servers=broker.bootstrap) as producer:
            producer.send_batch("fleet", [b"b%d" % i for i in range(100)]).get(30)
        wait_until(lambda: end_offsets(target.bootstrap, [tp]) == {tp: 200}, 60, "after restart")
        [again] = [p["pid"] for p in broker.processes() if p["role"] == "mirror"]
        assert again != pid
        values = [r.value for r in read_all(target.bootstrap, [tp])[tp]]
        assert values == [b"a%d" % i for i in range(100)] + [b"b%d" % i for i in range(100)]
        status = json.loads((tmp_path / "data" / "mirror" / "central" / "status.json").read_text())
        assert status["name"] == "central"
        admin.close()
