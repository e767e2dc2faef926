"""A kafka-python program runs against kvlog by changing only its imports (issue 13).

tests/broker/kafka_python_example.py is written the way kafka-python's documentation
writes it (admin create/describe, producers with callbacks, a group consumer with manual
commits). This test replaces its import lines with kvlog's, checks that nothing else
changed, and runs it twice against a kvlog broker as a separate process: the second run
finds the topic there (TopicAlreadyExistsError, caught) and its group resumes where the
first run committed.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kvlog
from kvlog.types import TopicPartition

PROGRAM = Path(__file__).with_name("kafka_python_example.py")
CHECKOUT = Path(kvlog.__file__).resolve().parents[1]

KAFKA_IMPORTS = [
    "from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata, "
    "TopicPartition",
    "from kafka.admin import NewTopic",
    "from kafka.errors import KafkaError, TopicAlreadyExistsError",
]
KVLOG_IMPORTS = [
    "from kvlog import Admin as KafkaAdminClient, Consumer as KafkaConsumer, "
    "Producer as KafkaProducer, OffsetAndMetadata, TopicPartition",
    "from kvlog import NewTopic",
    "from kvlog.errors import KafkaError, TopicAlreadyExistsError",
]


def ported() -> str:
    text = PROGRAM.read_text()
    for kafka_line, kvlog_line in zip(KAFKA_IMPORTS, KVLOG_IMPORTS, strict=True):
        assert text.count(kafka_line + "\n") == 1, kafka_line
        text = text.replace(kafka_line + "\n", kvlog_line + "\n")
    return text


def test_only_the_imports_change() -> None:
    before, after = PROGRAM.read_text().splitlines(), ported().splitlines()
    changed = [
        line
        for line in difflib.unified_diff(before, after, lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert changed == [f"-{line}" for line in KAFKA_IMPORTS] + [
        f"+{line}" for line in KVLOG_IMPORTS
    ]


def _run(program: Path, bootstrap: str) -> list[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(program), bootstrap],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout.splitlines()


def test_the_kafka_python_example_runs_against_kvlog(make_broker: Any, tmp_path: Path) -> None:
    broker = make_broker({"group.initial.rebalance.delay.ms": 0})
    program = tmp_path / "example_on_kvlog.py"
    program.write_text(ported())

    first = _run(program, broker.bootstrap)
    assert first[:2] == ["created my-topic", "topic my-topic partitions 3"]
    assert first[2].startswith("sent to my-topic ")
    assert first[3:] == ["acked 100", "consumed 103"]

    second = _run(program, broker.bootstrap)
    assert second[:2] == ["my-topic exists", "topic my-topic partitions 3"]
    assert second[3:] == ["acked 100", "consumed 103"], "the group did not resume"

    with kvlog.Admin(bootstrap_servers=broker.bootstrap) as admin:
        committed = admin.list_group_offsets("my-group")
    # Every record read was committed (unkeyed records may leave a partition empty).
    assert set(committed) <= {TopicPartition("my-topic", p) for p in range(3)}
    assert sum(committed.values()) == 206
