"""README's "When you outgrow one host" examples, run: the Python program against a Kafka
cluster (kvlog's own Kafka listener stands in for kafka://central:9092), the migration
command line, and the --mirror-config file (checked as kvlog serve checks it)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from mirror_util import read_all

import kvlog
from kvlog.tools.cli import main
from kvlog.tools.serve import load_mirror_config
from kvlog.types import TopicPartition

README = Path(__file__).resolve().parents[2] / "README.md"
CENTRAL = "kafka://central:9092"


def _section() -> str:
    text = README.read_text()
    return text.split("## When you outgrow one host", 1)[1].split("\n## ", 1)[0]


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", _section(), re.S)


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    config = {"group.initial.rebalance.delay.ms": 0}
    with (
        kvlog.Broker(tmp_path_factory.mktemp("src"), "tcp://127.0.0.1:0", config=config) as s,
        kvlog.Broker(tmp_path_factory.mktemp("central"), "tcp://127.0.0.1:0", config=config) as t,
    ):
        yield s, t


def test_the_python_example_runs_against_a_kafka_cluster(brokers: Any, tmp_path: Path) -> None:
    _, central = brokers
    [program] = _blocks("python")
    assert program.count(CENTRAL) == 1
    script = tmp_path / "outgrow.py"
    script.write_text(program.replace(CENTRAL, "kafka://" + central.kafka_bootstrap))
    env = {**os.environ, "PYTHONPATH": str(README.parent)}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=100, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["True", "{'celsius': 21.5}"]


def test_the_migration_command_moves_topics_and_a_group(brokers: Any, tmp_path: Path) -> None:
    source, central = brokers
    commands = [c for c in _blocks("sh") if "--until-caught-up" in c]
    [line] = [c.strip() for c in commands]
    args = shlex.split(line)
    assert args[:2] == ["kvlog", "mirror"]
    args = [("kafka://" + central.kafka_bootstrap) if a == CENTRAL else a for a in args[1:]]
    admin = kvlog.Admin(bootstrap_servers=source.bootstrap)
    for topic in ("orders", "payments"):
        admin.create_topic(topic, partitions=2)
        with kvlog.Producer(bootstrap_servers=source.bootstrap) as producer:
            for p in range(2):
                producer.send_batch(topic, [b"%d" % i for i in range(50)], partition=p)
    tp = TopicPartition("orders", 0)
    admin.alter_group_offsets("billing", {tp: 10})
    result = CliRunner().invoke(
        main,
        [*args, "--bootstrap-server", source.bootstrap, "--state-dir", str(tmp_path / "st")],
    )
    assert result.exit_code == 0, result.output
    tps = [TopicPartition(t, p) for t in ("orders", "payments") for p in range(2)]
    assert {k: len(v) for k, v in read_all(central.bootstrap, tps).items()} == {
        k: len(v) for k, v in read_all(source.bootstrap, tps).items()
    }
    moved = kvlog.Admin(bootstrap_servers="kafka://" + central.kafka_bootstrap)
    assert moved.list_group_offsets("billing")[tp] == 10
    admin.close()


def test_the_mirror_config_file_is_what_kvlog_serve_takes(tmp_path: Path) -> None:
    [toml] = _blocks("toml")
    path = tmp_path / "mirror.toml"
    path.write_text(toml)
    [entry] = load_mirror_config(path)
    assert entry["name"] == "site42" and entry["to"] == CENTRAL
    assert entry["target"]["security.protocol"] == "SASL_SSL"
    assert re.fullmatch(entry["topics"], "sensors.temp")
