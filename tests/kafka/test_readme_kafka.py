"""README's "Using Kafka clients" runs as written: its kcat lines, its kafka-python and
confluent-kafka programs, against a real broker (on free ports instead of README's 9092)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kafka_broker import KafkaBroker

README = Path(__file__).resolve().parents[2] / "README.md"
README_BOOTSTRAP = "127.0.0.1:9092"


def _section() -> str:
    text = README.read_text()
    return text.split("## Using Kafka clients", 1)[1].split("\n## ", 1)[0]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _section(), re.S)


@pytest.fixture(scope="module")
def broker(kafka_broker: KafkaBroker) -> KafkaBroker:
    # The shared broker (tests/kafka/conftest.py): free ports for every listener (a broker
    # of README's defaults took 7092, 7180 and 9645, which other brokers of a run or of
    # another checkout may hold); README's topics and groups are used by no other module.
    return kafka_broker


def _run_python(code: str, bootstrap: str, tmp_path: Path) -> str:
    assert README_BOOTSTRAP in code
    script = tmp_path / "example.py"
    script.write_text(code.replace(README_BOOTSTRAP, bootstrap))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_kafka_python_example_runs_twice(broker: KafkaBroker, tmp_path: Path) -> None:
    [code] = [b for b in _blocks("python") if "from kafka import" in b]
    first = _run_python(code, broker.kafka_bootstrap, tmp_path).splitlines()
    assert len(first) == 3, first
    # all three share a key: one partition, consecutive offsets, in order
    rows = [line.split(" ", 2) for line in first]
    assert len({r[0] for r in rows}) == 1
    assert [int(r[1]) for r in rows] == [0, 1, 2]
    assert [r[2] for r in rows] == [f"b'customer-7' b'order {i}'" for i in range(3)]
    # run again: the topic exists, the group resumes after its committed offsets
    second = _run_python(code, broker.kafka_bootstrap, tmp_path).splitlines()
    assert [int(line.split(" ", 2)[1]) for line in second] == [3, 4, 5]


def test_the_confluent_kafka_example_runs(broker: KafkaBroker, tmp_path: Path) -> None:
    [code] = [b for b in _blocks("python") if "from confluent_kafka import" in b]
    out = _run_python(code, broker.kafka_bootstrap, tmp_path).split()
    assert out[0] == "payments" and out[2] == "0" and out[3] == "b'42.00'", out


def test_the_kcat_lines_run(broker: KafkaBroker) -> None:
    if shutil.which("kcat") is None:
        pytest.skip("kcat is not installed (apt-get install kcat)")
    [block] = _blocks("sh")
    lines = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    listing, produce, consume, group = lines
    run = lambda cmd: subprocess.run(  # noqa: E731
        ["sh", "-c", cmd.replace(README_BOOTSTRAP, broker.kafka_bootstrap)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run(produce).returncode == 0
    assert "hello" in run(consume).stdout
    assert "broker 2147483647" in run(listing).stdout
    assert group.startswith("kcat -b 127.0.0.1:9092 -G billing greetings")
    # a group consumer runs until stopped: it must read the record, then be stopped
    # -u: unbuffered output, so the line shows while it runs (not only at exit)
    cmd = group.replace(README_BOOTSTRAP, broker.kafka_bootstrap) + " -o beginning -u"
    proc = subprocess.Popen(
        ["sh", "-c", f"exec {cmd}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "hello"  # blocks until the group reads it
    finally:
        proc.terminate()
        proc.wait(timeout=10)
