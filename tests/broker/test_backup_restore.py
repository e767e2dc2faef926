"""docs/OPERATIONS.md's backup and restore procedure, as a test: back up a live data dir
under load with ``kvlog backup``, restore by starting ``kvlog serve`` on the copy, and
every record acknowledged before the backup began is there, at its offset; the copy's
committed group offsets are there too. And a data dir written by a newer kvlog is refused
with a clear error (the format version)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from brokertest_util import ServedBroker, read_partitions, unique_topic

import kvlog
from kvlog.data_format import FORMAT_FILE, FORMAT_VERSION, NewerFormatError, read_format
from kvlog.types import TopicPartition

CHECKOUT = Path(kvlog.__file__).resolve().parents[1]
PARTITIONS = 4


def _kvlog(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "kvlog.tools.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


class Load:
    """A producer thread sending acks=all keyed records until stopped; keeps every
    acknowledgement with its time."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.producer = kvlog.Producer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
        self.topic = topic
        self.acked: list[tuple[float, int, int, bytes]] = []  # (time, partition, offset, value)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_ack(self, value: bytes) -> Any:
        def record(meta: Any) -> None:
            with self.lock:
                self.acked.append((time.monotonic(), meta.partition, meta.offset, value))

        return record

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            for _ in range(50):
                value = b"record-%07d" % n
                future = self.producer.send(self.topic, value=value, key=b"k%d" % (n % 64))
                future.add_callback(self._on_ack(value))
                n += 1
            time.sleep(0.002)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.producer.flush(30)
        self.producer.close()

    def acked_before(self, moment: float) -> list[tuple[int, int, bytes]]:
        with self.lock:
            return [(p, o, v) for t, p, o, v in self.acked if t < moment]


def test_backup_under_load_and_restore_keeps_every_acknowledged_record(tmp_path: Path) -> None:
    data = tmp_path / "data"
    copy = tmp_path / "backup"
    topic, group = unique_topic("backed-up"), unique_topic("backed-up-group")
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    broker = kvlog.Broker(data_dir=data, listen="tcp://127.0.0.1:0", console_listen="none").start()
    try:
        with kvlog.Admin(bootstrap_servers=broker.bootstrap) as admin:
            admin.create_topic(topic, partitions=PARTITIONS)
            admin.alter_group_offsets(group, {tps[0]: 1, tps[1]: 2})
        with Load(broker.bootstrap, topic) as load:
            while len(load.acked_before(time.monotonic())) < 2000:
                time.sleep(0.05)
            began = time.monotonic()
            done = _kvlog("backup", "--data-dir", str(data), "--to", str(copy))
            ended = time.monotonic()
            while len(load.acked_before(time.monotonic())) < len(load.acked_before(ended)) + 500:
                time.sleep(0.05)  # the load goes on after the backup
        assert done.returncode == 0, done.stderr
        assert "restore with: kvlog serve --data-dir" in done.stdout, done.stdout
        before = load.acked_before(began)
        live = read_partitions(broker.bootstrap, tps)
    finally:
        broker.stop()

    manifest = json.loads((copy / "BACKUP.json").read_text())
    assert [e["node_id"] for e in manifest["environments"]] == [None, 0]
    assert read_format(copy) == FORMAT_VERSION
    restored_broker = ServedBroker(copy).start()  # the restore: kvlog serve on the copy
    try:
        restored = read_partitions(restored_broker.bootstrap, tps)
        with kvlog.Admin(bootstrap_servers=restored_broker.bootstrap) as admin:
            assert admin.list_group_offsets(group) == {tps[0]: 1, tps[1]: 2}
    finally:
        restored_broker.kill()

    stored = {(tp.partition, r.offset): r.value for tp in tps for r in restored[tp]}
    missing = [(p, o) for p, o, v in before if stored.get((p, o)) != v]
    assert len(before) >= 2000 and not missing, f"{len(missing)} acknowledged records lost"
    for tp in tps:  # the copy is a prefix of the live log: nothing reordered or invented
        got = [(r.offset, r.value) for r in restored[tp]]
        assert got == [(r.offset, r.value) for r in live[tp]][: len(got)]


def test_a_data_dir_from_a_newer_kvlog_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    broker = kvlog.Broker(data_dir=data, listen="tcp://127.0.0.1:0", console_listen="none").start()
    broker.stop()
    assert read_format(data) == FORMAT_VERSION, "a new data dir is stamped"
    assert read_format(data / "logs" / "0") == FORMAT_VERSION
    (data / FORMAT_FILE).write_text(json.dumps({"format": FORMAT_VERSION + 1}))
    with pytest.raises(NewerFormatError) as info:
        kvlog.Broker(data_dir=data, listen="tcp://127.0.0.1:0", console_listen="none").start()
    message = str(info.value)
    assert f"format {FORMAT_VERSION + 1}" in message and "newer kvlog" in message, message
    refused = _kvlog("backup", "--data-dir", str(data), "--to", str(tmp_path / "copy"))
    assert refused.returncode == 1 and "newer kvlog" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
