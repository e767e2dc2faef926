"""The client commands against a real ``kvlog serve`` (the session's shared broker)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from clitest_util import Serve, cli, pid_alive, run_kvlog, unique, wait_until

import kvlog
from kvlog.partitioner import partition_for_key

STATUS_KEYS = {"role", "node_id", "pid", "endpoint", "kafka", "log_dir", "started_at"}
PERF_KEYS = {"records_per_s", "mb_per_s", "p50_ms", "p99_ms", "p999_ms", "max_ms"}


def ok(*args: str, input: str | None = None) -> str:
    result = cli(*args, input=input)
    assert result.exit_code == 0, result.output
    return result.output


def describe(serve: Serve, topic: str) -> dict[str, Any]:
    out = ok("topics", "describe", topic, "--json", "--bootstrap-server", serve.bootstrap)
    (desc,) = json.loads(out)
    return desc


def consume_lines(serve: Serve, topic: str, n: int, *extra: str) -> list[list[str]]:
    result = cli(
        "consume",
        topic,
        "--max-messages",
        str(n),
        "--timeout-ms",
        "10000",
        "--bootstrap-server",
        serve.bootstrap,
        *extra,
    )
    assert result.exit_code == 0, result.output
    assert f"Processed a total of {n} messages" in result.stderr
    return [line.split("\t") for line in result.stdout.splitlines()]


def test_topics_create_list_describe_alter_delete(serve: Serve) -> None:
    topic = unique("orders")
    b = ("--bootstrap-server", serve.bootstrap)
    out = ok("topics", "create", topic, "--partitions", "3", "--config", "retention.ms=60000", *b)
    assert f"Created topic {topic}" in out
    again = cli("topics", "create", topic, *b)
    assert again.exit_code == 1
    assert again.output.strip().splitlines()[-1].startswith("Error: ")
    assert "exists already" in again.output
    assert "exists already" in ok("topics", "create", topic, "--if-not-exists", *b)
    assert topic in ok("topics", "list", *b).split()

    desc = describe(serve, topic)
    assert [p["partition"] for p in desc["partitions"]] == [0, 1, 2]
    for p in desc["partitions"]:
        assert p["leader"] == 0 and p["replicas"] == [0] and p["isr"] == [0]
    assert desc["overrides"] == {"retention.ms": 60000}
    assert desc["config"]["retention.ms"] == 60000
    text = ok("topics", "describe", topic, *b)
    assert "retention.ms" in text and "(override)" in text and "isr" in text

    altered = cli("topics", "alter", topic, "--partitions", "4", *b)
    assert altered.exit_code == 0, altered.output
    assert "3 -> 4 partitions" in altered.stdout
    assert "WARNING" in altered.stderr and "murmur2(key) % 4" in altered.stderr
    assert altered.stderr.count("murmur2") == 1  # printed once, not also logged
    ok(
        "topics",
        "alter",
        topic,
        "--config",
        "retention.bytes=1000000",
        "--delete-config",
        "retention.ms",
        *b,
    )
    desc = describe(serve, topic)
    assert len(desc["partitions"]) == 4
    assert desc["overrides"] == {"retention.bytes": 1000000}

    bad = cli("topics", "alter", topic, "--config", "retention.msec=5", *b)
    assert bad.exit_code == 1 and "did you mean 'retention.ms'" in bad.output
    assert "Deleted topic" in ok("topics", "delete", topic, *b)
    assert topic not in ok("topics", "list", *b).split()
    gone = cli("topics", "describe", topic, *b)
    assert (
        gone.exit_code == 1 and "does not exist" in gone.output and "Traceback" not in gone.output
    )


def test_elect_leaders(serve: Serve) -> None:
    topic = unique("elect")
    ok("topics", "create", topic, "--bootstrap-server", serve.bootstrap)
    out = ok("topics", "elect-leaders", "--topic", topic, "--bootstrap-server", serve.bootstrap)
    assert "already led by its preferred replica" in out


def test_produce_from_stdin_and_consume_it_back(serve: Serve) -> None:
    topic = unique("console")
    b = ("--bootstrap-server", serve.bootstrap)
    ok("topics", "create", topic, "--partitions", "3", *b)
    lines = [f"key{i}:value {i}" for i in range(20)]
    result = cli(
        "produce",
        topic,
        "--key-separator",
        ":",
        "--header",
        "src=test",
        *b,
        input="\n".join(lines) + "\n",
    )
    assert result.exit_code == 0, result.output
    assert f"sent 20 record(s) to {topic}" in result.stderr

    rows = consume_lines(
        serve,
        topic,
        20,
        "--from-beginning",
        "--print-partition",
        "--print-offset",
        "--print-key",
        "--print-headers",
    )
    assert len(rows) == 20
    seen: dict[int, list[int]] = {}
    for partition, offset, headers, key, value in rows:
        p = int(partition.removeprefix("Partition:"))
        assert p == partition_for_key(key.encode(), 3)
        assert headers == "src:test"
        assert value == "value " + key.removeprefix("key")
        seen.setdefault(p, []).append(int(offset.removeprefix("Offset:")))
    for offsets in seen.values():
        assert offsets == list(range(len(offsets)))  # each partition in offset order

    # One partition from an offset, with timestamps and a custom separator.
    p, offsets = max(seen.items(), key=lambda kv: len(kv[1]))
    rows = consume_lines(
        serve,
        topic,
        len(offsets) - 1,
        "--partition",
        str(p),
        "--offset",
        "1",
        "--print-offset",
        "--print-timestamp",
        "--key-separator",
        "|",
    )
    assert [r[0].split("|")[1] for r in rows] == [f"Offset:{o}" for o in offsets[1:]]
    assert all(r[0].startswith("CreateTime:") for r in rows)

    # Fewer records than asked for within --timeout-ms: exit 1, with what was read.
    short = cli(
        "consume", topic, "--from-beginning", "--max-messages", "21", "--timeout-ms", "1500", *b
    )
    assert short.exit_code == 1
    assert "20 of 21 read" in short.output
    assert len(short.stdout.splitlines()) == 20


def test_produce_errors_are_one_line(serve: Serve) -> None:
    b = ("--bootstrap-server", serve.bootstrap)
    topic = unique("errors")
    ok("topics", "create", topic, *b)
    result = cli("produce", topic, "--key-separator", ":", *b, input="k:v\nno separator\n")
    assert result.exit_code == 1
    assert "line 2 has no key separator ':'" in result.output
    assert "sent 1 record(s)" in result.stderr
    result = cli("produce", topic, "--partition", "7", *b, input="x\n")
    assert result.exit_code == 1 and "partition 7 does not exist" in result.output
    assert "Traceback" not in result.output
    missing = cli("consume", unique("missing"), "--timeout-ms", "100", *b)
    assert missing.exit_code == 1 and "do not exist" in missing.output


def test_console_tools_as_real_processes(serve: Serve) -> None:
    topic = unique("piped")
    b = ["--bootstrap-server", serve.bootstrap]
    assert cli("topics", "create", topic, *b).exit_code == 0
    produced = run_kvlog(["produce", topic, *b], input="one\ntwo\nthree")
    assert produced.returncode == 0, produced.stderr
    assert "sent 3 record(s)" in produced.stderr
    consumed = run_kvlog(["consume", topic, "--from-beginning", "--max-messages", "3", *b])
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.splitlines() == ["one", "two", "three"]
    assert "Traceback" not in consumed.stderr


def _group_report(serve: Serve, group: str) -> dict[str, Any]:
    out = ok("groups", "describe", group, "--json", "--bootstrap-server", serve.bootstrap)
    (report,) = json.loads(out)
    return report


def _committed(serve: Serve, group: str) -> dict[int, int | None]:
    return {
        r["partition"]: r["committed_offset"] for r in _group_report(serve, group)["partitions"]
    }


def test_groups_describe_reset_and_delete(serve: Serve) -> None:
    topic, group = unique("grouped"), unique("g")
    b = ("--bootstrap-server", serve.bootstrap)
    ok("topics", "create", topic, "--partitions", "2", *b)
    ok("produce", topic, *b, "--partition", "0", input="".join(f"a{i}\n" for i in range(6)))
    ok("produce", topic, *b, "--partition", "1", input="".join(f"b{i}\n" for i in range(4)))
    consume_lines(serve, topic, 10, "--group", group, "--from-beginning")

    listed = json.loads(ok("groups", "list", "--json", *b))
    assert group in {g["group_id"] for g in listed}
    report = _group_report(serve, group)
    assert report["members"] == []
    rows = {r["partition"]: r for r in report["partitions"]}
    assert {p: (r["committed_offset"], r["log_end_offset"], r["lag"]) for p, r in rows.items()} == {
        0: (6, 6, 0),
        1: (4, 4, 0),
    }
    assert "lag" in ok("groups", "describe", group, *b)

    plan = cli(
        "groups",
        "reset-offsets",
        "--group",
        group,
        "--topic",
        topic,
        "--to-earliest",
        "--dry-run",
        *b,
    )
    assert plan.exit_code == 0, plan.output
    assert "dry run" in plan.output
    assert _committed(serve, group) == {0: 6, 1: 4}  # nothing applied

    reset = ["groups", "reset-offsets", "--group", group, "--json", "--execute", *b]
    applied = json.loads(ok(*reset, "--topic", topic, "--to-earliest"))
    assert [(r["current_offset"], r["new_offset"]) for r in applied["partitions"]] == [
        (6, 0),
        (4, 0),
    ]
    assert _committed(serve, group) == {0: 0, 1: 0}
    assert {r["partition"]: r["lag"] for r in _group_report(serve, group)["partitions"]} == {
        0: 6,
        1: 4,
    }
    ok(*reset, "--topic", f"{topic}:1", "--shift-by", "3")
    assert _committed(serve, group) == {0: 0, 1: 3}
    ok(*reset, "--topic", topic, "--to-offset", "1000")  # clamped to the log end
    assert _committed(serve, group) == {0: 6, 1: 4}
    ok(*reset, "--topic", topic, "--shift-by", "-2")
    assert _committed(serve, group) == {0: 4, 1: 2}
    ok(*reset, "--topic", topic, "--to-datetime", "2000-01-01T00:00:00Z")
    assert _committed(serve, group) == {0: 0, 1: 0}
    ok(*reset, "--topic", topic, "--to-datetime", "2999-01-01T00:00:00+02:00")
    assert _committed(serve, group) == {0: 6, 1: 4}
    bad = cli(*reset, "--topic", f"{topic}:9", "--to-earliest")
    assert bad.exit_code == 2 and "no partition 9" in bad.output

    # A live member: describe shows it; reset-offsets and delete are refused.
    consumer = kvlog.Consumer(
        bootstrap_servers=serve.bootstrap,
        group_id=group,
        client_id="cli-test-member",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    try:
        consumer.subscribe([topic])
        wait_until(lambda: consumer.poll(timeout_ms=100) is not None and consumer.assignment(), 20)
        report = _group_report(serve, group)
        (member,) = report["members"]
        assert member["client_id"] == "cli-test-member"
        assert sorted(member["assignment"]) == [f"{topic}-0", f"{topic}-1"]
        assert all(r["client_id"] == "cli-test-member" for r in report["partitions"])
        refused = cli(*reset, "--topic", topic, "--to-earliest")
        assert refused.exit_code == 1 and "active member" in refused.output
        refused = cli("groups", "delete", group, *b)
        assert refused.exit_code == 1 and "Traceback" not in refused.output
    finally:
        consumer.close()
    assert "Deleted group" in ok("groups", "delete", group, *b)
    assert group not in {g["group_id"] for g in json.loads(ok("groups", "list", "--json", *b))}


def test_status_json_has_exactly_the_keys(serve: Serve) -> None:
    entries = serve.status()
    assert {e["role"] for e in entries} == {"coordinator", "node", "broker", "sweeper", "console"}
    for entry in entries:
        assert set(entry) == STATUS_KEYS
        assert pid_alive(entry["pid"])
    (node,) = [e for e in entries if e["role"] == "node"]
    assert node["node_id"] == 0 and node["log_dir"].endswith("logs/0")
    kafka = {e["role"]: e["kafka"] for e in entries}
    assert serve.kafka_bootstrap and kafka["broker"] == serve.kafka_bootstrap
    assert kafka["sweeper"] is None and kafka["console"] is None
    assert len({kafka[r] for r in kafka if r not in ("sweeper", "console")}) == 3
    table = ok("status", "--data-dir", str(serve.data_dir))
    assert "coordinator" in table and str(node["pid"]) in table and kafka["node"] in table


def test_dump_reads_the_log_dir_while_the_broker_runs(serve: Serve) -> None:
    topic = unique("dumped")
    b = ("--bootstrap-server", serve.bootstrap)
    ok("topics", "create", topic, *b)
    ok("produce", topic, "--key-separator", "=", *b, input="k1=v1\nk2=v2\n")
    ok("produce", topic, *b, input="bin\n")
    log_dir = str(serve.data_dir / "logs" / "0")
    lines = [
        json.loads(line)
        for line in ok(
            "dump", "--log-dir", log_dir, "--topic", topic, "--records", "--json"
        ).splitlines()
    ]
    partitions = [x for x in lines if x["type"] == "partition"]
    batches = [x for x in lines if x["type"] == "batch"]
    records = [x for x in lines if x["type"] == "record"]
    (part,) = partitions
    # The leader stores its high watermark a moment after it acknowledges (as Kafka
    # checkpoints it): the stored one may trail the log end here.
    assert 2 <= part.pop("high_watermark") <= 3
    assert part == {
        "type": "partition",
        "topic": topic,
        "partition": 0,
        "log_start_offset": 0,
        "log_end_offset": 3,
        "size": sum(x["size"] for x in batches),
    }
    assert [(x["base_offset"], x["record_count"], x["crc"], x["codec"]) for x in batches] == [
        (0, 2, "ok", "none"),
        (2, 1, "ok", "none"),
    ]
    assert all(x["producer_id"] >= 0 and x["base_sequence"] == 0 for x in batches)
    assert [(x["offset"], x["key"], x["value"]) for x in records] == [
        (0, "k1", "v1"),
        (1, "k2", "v2"),
        (2, None, "bin"),
    ]
    text = ok("dump", "--log-dir", log_dir, "--topic", topic, "--records")
    assert f"{topic}-0: log start 0, high watermark " in text and "log end 3" in text
    assert "crc ok" in text and "key b'k1' value b'v1'" in text
    assert "no matching partitions" in ok("dump", "--log-dir", log_dir, "--topic", unique("none"))


def _perf(*args: str) -> dict[str, Any]:
    out = ok("perf", *args, "--json")
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result) >= PERF_KEYS
    return result


def test_perf_produce_and_consume_json(serve: Serve) -> None:
    topic = unique("perf")
    b = ("--bootstrap-server", serve.bootstrap, "--topic", topic)
    produced = _perf("produce", *b, "--records", "3000", "--partitions", "2")
    assert produced["records"] == 3000 and produced["records_per_s"] > 0
    assert produced["latency_samples"] == 3000
    assert 0 < produced["p50_ms"] <= produced["p99_ms"] <= produced["p999_ms"] <= produced["max_ms"]
    assert produced["mb_per_s"] == pytest.approx(produced["records_per_s"] * 116 / 1e6, rel=0.01)
    consumed = _perf("consume", *b, "--records", "6000")  # fills 6000 more first
    assert consumed["records"] == 6000 and consumed["records_per_s"] > 0
    nofill = _perf("consume", *b, "--records", "9000", "--no-fill", "--batch-size", "262144")
    assert nofill["records"] == 9000
    e2e = _perf("e2e", *b, "--rate", "400", "--seconds", "1", "--acks", "1")
    assert e2e["records"] == 400 and e2e["received"] == 400 and e2e["missing"] == 0
    assert e2e["p50_ms"] is not None and e2e["max_ms"] < 10_000


def test_perf_with_an_embedded_broker() -> None:
    started = time.monotonic()
    result = _perf("produce", "--records", "2000", "--acks", "1", "--compression", "zstd")
    assert result["embedded_broker"] is True
    assert result["records"] == 2000
    assert time.monotonic() - started < 30


def test_demo_uses_the_broker_already_running_on_its_data_dir(serve: Serve) -> None:
    result = cli("demo", "--data-dir", str(serve.data_dir))
    assert result.exit_code == 0, result.output
    assert "Broker already running" in result.output
    assert f"ZeroMQ bootstrap {serve.bootstrap} " in result.output
    assert f"Kafka bootstrap  {serve.kafka_bootstrap} " in result.output
    assert "What just happened" in result.output
    assert "Stopping the broker" not in result.output
    assert serve.proc.poll() is None and len(serve.status()) == 5  # with the console
