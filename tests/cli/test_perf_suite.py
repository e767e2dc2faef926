"""The benchmark suite's commands and scripts on tiny workloads: they run, their JSON
has the fields BENCHMARKS.md and the plots read. No test measures speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from clitest_util import Serve, cli, unique

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench"


def perf(*args: str) -> dict[str, Any]:
    result = cli("perf", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_produce_with_send_batch_and_preload(serve: Serve) -> None:
    topic = unique("perf-batch")
    b = ("--bootstrap-server", serve.bootstrap, "--topic", topic, "--partitions", "3")
    result = perf("produce", *b, "--records", "2500", "--send-batch", "1000", "--preload", "700")
    assert result["api"] == "send_batch" and result["send_batch_records"] == 1000
    assert result["records"] == 2500 and result["stored_before"] == 700
    assert result["latency_samples"] == 2500  # every record, not a sample
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    percentiles = dict(result["percentiles"])
    assert percentiles[50.0] == result["p50_ms"] and percentiles[100.0] >= result["p999_ms"]
    # send() path: the same fields, and "api" says which
    assert perf("produce", *b, "--records", "500")["api"] == "send"


def test_produce_transactional_paired_with_idempotent(serve: Serve) -> None:
    topic = unique("perf-txn")
    b = ("--bootstrap-server", serve.bootstrap, "--topic", topic, "--partitions", "3")
    single = perf("produce", *b, "--records", "2500", "--transactional", "1000")
    assert single["records_per_transaction"] == 1000
    assert single["transactions"] == 3  # 1000, 1000 and the last 500
    assert 0 < single["commit_p50_ms"] <= single["commit_max_ms"]
    paired = perf(
        "produce", *b, "--records", "1200", "--transactional", "500", "--paired-rounds", "2"
    )
    assert paired["test"] == "produce-paired" and len(paired["rounds"]) == 2
    for r in paired["rounds"]:
        assert r["ratio"] == round(
            r["transactional_records_per_s"] / r["idempotent_records_per_s"], 4
        )
    ratios = sorted(r["ratio"] for r in paired["rounds"])
    assert paired["ratio_min"] == ratios[0] and paired["ratio_max"] == ratios[-1]
    assert len(paired["load_before"]) == 3
    refused = cli("perf", "produce", *b, "--records", "10", "--paired-rounds", "2")
    assert refused.exit_code != 0 and "--transactional" in refused.output


def test_consume_after_a_preload_reads_the_filled_records(serve: Serve) -> None:
    topic = unique("perf-preload")
    b = ("--bootstrap-server", serve.bootstrap, "--topic", topic, "--partitions", "2")
    result = perf("consume", *b, "--records", "1500", "--preload", "900")
    assert result["records"] == 1500 and result["stored_before"] == 900


@pytest.mark.parametrize(
    ("writer", "reader"), [("confluent-kafka", "kafka-python"), ("kafka-python", "confluent-kafka")]
)
def test_kafka_clients_produce_and_consume_on_the_kafka_listener(
    serve: Serve, writer: str, reader: str
) -> None:
    assert serve.kafka_bootstrap is not None
    topic = unique("perf-kafka")
    b = ("--bootstrap-server", serve.bootstrap, "--kafka-bootstrap", serve.kafka_bootstrap)
    b += ("--topic", topic, "--partitions", "2")
    produced = perf("produce", *b, "--records", "1200", "--client", writer)
    assert produced["client"] == writer and produced["records"] == 1200
    assert 0 < produced["latency_samples"] <= 1200
    # The other client reads exactly what the first stored (it would time out otherwise).
    read = perf("consume", *b, "--records", "1200", "--no-fill", "--client", reader)
    assert read["client"] == reader and read["records"] == 1200
    # consume fills the topic through a Kafka producer first without --no-fill.
    filled = perf("consume", *b, "--records", "700", "--client", reader)
    assert filled["records"] == 700


def test_pipeline_produces_and_consumes_together(serve: Serve) -> None:
    topic = unique("perf-pipeline")
    b = ("--bootstrap-server", serve.bootstrap, "--topic", topic)
    result = perf("pipeline", *b, "--records", "3000", "--send-batch", "500")
    assert result["test"] == "pipeline" and result["received"] == 3000
    assert result["produce_records_per_s"] > 0 and result["consume_records_per_s"] > 0


def test_e2e_reports_the_produce_half_too(serve: Serve) -> None:
    b = ("--bootstrap-server", serve.bootstrap, "--topic", unique("perf-e2e"))
    result = perf("e2e", *b, "--rate", "300", "--seconds", "1")
    assert result["received"] == 300
    assert 0 < result["ack_p50_ms"] <= result["ack_p99_ms"] <= result["ack_max_ms"]


def test_sizing_splits_the_rate_over_processes_and_plots_latency_over_time(
    serve: Serve, tmp_path: Path
) -> None:
    b = ("--bootstrap-server", serve.bootstrap, "--topic", unique("perf-sizing"))
    args = ["--partitions", "3", "--producers", "2", "--consumers", "2", "--rate", "400"]
    png = tmp_path / "latency.png"
    plot = ["--plot", str(png), "--window", "0.25"] if _has_matplotlib() else []
    result = perf("sizing", *b, *args, "--seconds", "1", *plot)
    assert result["test"] == "sizing" and result["records"] == 400
    assert result["received"] == 400 and result["missing"] == 0
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["p999_ms"] <= result["max_ms"]
    if plot:
        assert png.read_bytes()[:4] == b"\x89PNG"


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize(
    ("scenario", "extra"),
    [("leave", []), ("join", []), ("grow", ["--grow-to", "4"])],
)
def test_groups_rebalance_time(serve: Serve, scenario: str, extra: list[str]) -> None:
    result = perf(
        "groups",
        "--bootstrap-server",
        serve.bootstrap,
        "--members",
        "2",
        "--partitions",
        "4",
        "--scenario",
        scenario,
        "--repeat",
        "2",
        "--heartbeat-interval-ms",
        "100",
        "--session-timeout-ms",
        "3000",
        *extra,
    )
    assert result["scenario"] == scenario and len(result["seconds"]) == 2
    assert 0 < result["min_s"] <= result["median_s"] <= result["max_s"]


def test_groups_refuses_a_grow_that_does_not_grow() -> None:
    result = cli("perf", "groups", "--scenario", "grow", "--members", "5", "--grow-to", "5")
    assert result.exit_code == 2 and "--grow-to" in result.output


def test_failover_kills_the_leader_and_times_the_new_one() -> None:
    result = perf("failover", "--repeat", "1", "--settle-s", "0", "--rate", "200", "--fresh-broker")
    assert result["fresh_broker"] is True
    (rep,) = result["repetitions"]
    assert rep["killed_node"] != rep["new_leader"]
    assert 0 < rep["seconds"] <= rep["seconds_to_record_sent_after_kill"]


def _script(name: str, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def test_compare_skips_missing_peers_cleanly(tmp_path: Path) -> None:
    # A PATH without redis-server and nats-server: both peers are skipped, kvlog runs.
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    out_file = tmp_path / "compare.json"
    out = _script(
        "compare", "--records", "3000", "--rounds", "1", "--json-out", str(out_file), env=env
    )
    assert "skipping Redis Streams: redis-server is not installed" in out
    assert "skipping NATS JetStream: nats-server is not installed" in out
    data = json.loads(out_file.read_text())
    assert set(data["medians"]) == {"kvlog"}
    assert data["medians"]["kvlog"]["produce (send_batch)"] > 0


def test_stored_pairs_a_preloaded_log_with_an_empty_one(tmp_path: Path) -> None:
    out_file = tmp_path / "stored.json"
    out = _script(
        "stored", "--preload", "3000", "--records", "2000", "--rounds", "1",
        "--json-out", str(out_file),
    )  # fmt: skip
    assert "produce: stored / empty, median of 1 paired rounds" in out
    data = json.loads(out_file.read_text())
    assert len(data["ratios"]["produce"]) == len(data["ratios"]["consume"]) == 1
    assert all(r > 0 for r in data["ratios"]["consume"])


def _fake_results(root: Path) -> Path:
    results = root / "results"
    results.mkdir()
    meta = {"_meta": {"loadavg_before": [0.5, 0.5, 0.5]}}
    run = {
        "test": "produce",
        "records_per_s": 1000.0,
        "mb_per_s": 0.1,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "p999_ms": 3.0,
        "max_ms": 4.0,
        "percentiles": [[0.0, 0.5], [50.0, 1.0], [99.0, 2.0], [100.0, 4.0]],
        **meta,
    }
    for name in ("produce-p1", "produce-p16", "consume-stored-0", "consume-stored-1m"):
        entry = {"scenario": name, "command": f"kvlog perf {name}", "runs": [run, run]}
        (results / f"{name}.json").write_text(json.dumps(entry))
    e2e = {"scenario": "e2e-2000", "command": "kvlog perf e2e", "runs": [dict(run, test="e2e")]}
    (results / "e2e-2000.json").write_text(json.dumps(e2e))
    groups = {"test": "groups", "seconds": [0.1, 0.3], "median_s": 0.2, **meta}
    entry = {"scenario": "groups-leave", "command": "kvlog perf groups", "runs": [groups]}
    (results / "groups-leave.json").write_text(json.dumps(entry))
    return results


def test_report_prints_the_tables(tmp_path: Path) -> None:
    out = _script("report", "--results", str(_fake_results(tmp_path)))
    assert "| produce-p16 | `kvlog perf produce-p16` | 1 k (1 k .. 1 k)" in out
    assert "| groups-leave | `kvlog perf groups` | 0.200 | 0.300 | 2 |" in out


def test_plot_draws_the_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = _script("plot", "--results", str(_fake_results(tmp_path)), "--out", str(tmp_path))
    for name in ("latency-e2e.png", "throughput-stored.png", "throughput-partitions.png"):
        assert name in out
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
