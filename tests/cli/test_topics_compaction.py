"""``kvlog topics compact`` and the compaction part of ``kvlog topics describe``, against
the shared ``kvlog serve`` broker (its sweeper answers the request file)."""

from __future__ import annotations

import json
from pathlib import Path

from clitest_util import Serve, cli, unique

import kvlog
from kvlog.types import TopicPartition


def _fill(serve: Serve, topic: str, rounds: int, keys: int) -> None:
    with kvlog.Producer(bootstrap_servers=serve.bootstrap) as producer:
        for r in range(rounds):
            for k in range(keys):
                producer.send(topic, value=f"v{r}".encode(), key=f"k{k}".encode())
            producer.flush()


def test_compact_forces_a_pass_and_describe_shows_it(serve: Serve) -> None:
    topic = unique("table")
    b = ("--bootstrap-server", serve.bootstrap)
    d = ("--data-dir", str(serve.data_dir))
    # A ratio of 1 never triggers by itself: only the forced pass compacts.
    created = cli("topics", "create", topic, "--config", "cleanup.policy=compact", *b)
    assert created.exit_code == 0, created.output
    cli("topics", "alter", topic, "--config", "min.cleanable.dirty.ratio=1", *b)
    _fill(serve, topic, rounds=10, keys=20)

    before = cli("topics", "describe", topic, "--json", *b, *d)
    assert before.exit_code == 0, before.output
    [row] = json.loads(before.output)[0]["compaction"]
    assert row["partition"] == 0 and row["last_compaction"] is None
    assert row["dirty_ratio"] == 1.0 and row["dirty_bytes"] > 0

    done = cli("topics", "compact", topic, "--json", *d)
    assert done.exit_code == 0, done.output
    [part] = json.loads(done.output)["partitions"]
    assert part["reason"] == "forced" and part["records_removed"] >= 150
    assert part["bytes_after"] < part["bytes_before"]

    after = cli("topics", "describe", topic, "--json", *b, *d)
    [row] = json.loads(after.output)[0]["compaction"]
    assert row["last_compaction"]["records_removed"] == part["records_removed"]
    assert row["dirty_ratio"] == 0.0 and row["first_dirty_offset"] > 0
    text = cli("topics", "describe", topic, *b, *d).output
    assert "dirty ratio" in text and "last compaction" in text and "(forced)" in text

    # What a consumer reads from offset 0: the latest value of every key.
    consumer = kvlog.Consumer(bootstrap_servers=serve.bootstrap, auto_offset_reset="earliest")
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = consumer.end_offsets([tp])[tp]
        table: dict[bytes, bytes] = {}
        while consumer.position(tp) < end:
            for records in consumer.poll(timeout_ms=1000).values():
                table.update((r.key, r.value) for r in records)
    finally:
        consumer.close()
    assert table == {f"k{k}".encode(): b"v9" for k in range(20)}


def test_compact_says_why_it_cannot(serve: Serve, tmp_path: Path) -> None:
    b = ("--bootstrap-server", serve.bootstrap)
    d = ("--data-dir", str(serve.data_dir))
    plain = unique("plain")
    assert cli("topics", "create", plain, *b).exit_code == 0
    refused = cli("topics", "compact", plain, *d)
    assert refused.exit_code == 1 and "cleanup.policy=delete" in refused.output
    # A plain topic's description has no compaction rows.
    assert (
        json.loads(cli("topics", "describe", plain, "--json", *b, *d).output)[0]["compaction"] == []
    )
    missing = cli("topics", "compact", unique("missing"), *d)
    assert missing.exit_code == 1 and "does not exist" in missing.output
    nobody = cli("topics", "compact", plain, "--data-dir", str(tmp_path / "elsewhere"))
    assert nobody.exit_code == 1 and "no kvlog sweeper is running" in nobody.output
    assert "Traceback" not in refused.output + missing.output + nobody.output
