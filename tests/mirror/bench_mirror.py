"""``kvlog mirror`` throughput between two kvlog instances on this machine (not a test).

    PYTHONPATH=$PWD python tests/mirror/bench_mirror.py [records] [partitions] [in_flight]

A source kvlog and a target kvlog (its Kafka listener on loopback), each one node with
fsync before every acknowledgement (kvlog's default). The source holds ``records`` keyed
records (100-byte values, 16-byte keys) on ``partitions`` partitions, written before the
clock starts; then a migration (``--until-caught-up``) runs in this process and the
figure is records forwarded per second, from the mirror's start (target topic creation
included) to the last acknowledgement. ``in_flight`` is the mirror's batches in flight
per target partition (``max_in_flight``, default 5; 1 is the one-at-a-time mirror).
The target is then read back and counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mirror_util import end_offsets

import kvlog
from kvlog.types import TopicPartition
from kvlog.workers.mirror_model import MirrorSpec
from kvlog.workers.mirror_shell import Mirror

VALUE, KEY = b"v" * 100, b"k%015d"


def main() -> None:
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    partitions = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    in_flight = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    root = Path(tempfile.mkdtemp(prefix="bench-mirror-"))
    with (
        kvlog.Broker(root / "source", "tcp://127.0.0.1:0", kafka_listen=None) as source,
        kvlog.Broker(root / "target", "tcp://127.0.0.1:0", kafka_listen="127.0.0.1:0") as target,
    ):
        kvlog.Admin(bootstrap_servers=source.bootstrap).create_topic("bench", partitions=partitions)
        start = time.monotonic()
        with kvlog.Producer(bootstrap_servers=source.bootstrap, linger_ms=5) as producer:
            chunk = 20_000
            for first in range(0, records, chunk):
                n = min(chunk, records - first)
                producer.send_batch(
                    "bench", [VALUE] * n, keys=[KEY % i for i in range(first, first + n)]
                )
            producer.flush(300)
        written = time.monotonic() - start
        spec = MirrorSpec(
            name="bench",
            target="kafka://" + target.kafka_bootstrap,
            topics="bench",
            source=source.bootstrap,
            state_dir=str(root / "state"),
            until_caught_up=True,
            max_in_flight=in_flight,
        )
        start = time.monotonic()
        code = Mirror(spec).run()
        elapsed = time.monotonic() - start
        tps = [TopicPartition("bench", p) for p in range(partitions)]
        on_target = sum(end_offsets(target.bootstrap, tps).values())
        assert code == 0 and on_target == records, (code, on_target)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(
        json.dumps(
            {
                "records": records,
                "partitions": partitions,
                "max_in_flight": in_flight,
                "value_bytes": len(VALUE),
                "source_write_s": round(written, 2),
                "mirror_s": round(elapsed, 2),
                "records_per_s": round(records / elapsed),
                "mb_per_s": round(records * len(VALUE) / elapsed / 1e6, 1),
                "commit": commit,
                "load_before": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
