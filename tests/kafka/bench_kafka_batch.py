"""Cross-format conversion speed (not a test): records/s both ways, per codec.

    PYTHONPATH=$PWD python tests/kafka/bench_kafka_batch.py [--python]

100-byte values, 16-byte keys, 1,000 records per batch. ``--python`` measures the
pure-Python twin instead of the C loop.
"""

from __future__ import annotations

import gc
import os
import sys
import time

from kvlog import _kafka_records_py, kafka_batch
from kvlog import batch as bf
from kvlog.codecs import Codec

RECORDS_PER_BATCH = 1000


def rate(fn, records: int, seconds: float = 1.0) -> float:
    fn()
    n = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n * records / elapsed


def main() -> None:
    if "--python" in sys.argv:
        kafka_batch.decode_records = _kafka_records_py.decode_records
        kafka_batch.encode_records = _kafka_records_py.encode_records
    gc.disable()
    keys = [b"key-%012d" % i for i in range(RECORDS_PER_BATCH)]
    values = [os.urandom(50) * 2 for _ in range(RECORDS_PER_BATCH)]
    print(f"C accelerator: {kafka_batch.ACCELERATED and '--python' not in sys.argv}")
    for codec in Codec:
        native = bf.encode(0, keys, values, first_timestamp=1, max_timestamp=1, codec=codec)
        kafka = kafka_batch.encode(
            None, 0, keys, values, None, first_timestamp=1, max_timestamp=1, codec=codec
        )
        to_columns = rate(lambda k=kafka: bf.decode_raw(k), RECORDS_PER_BATCH)
        to_kafka = rate(lambda n=native: kafka_batch.native_to_kafka(0, n), RECORDS_PER_BATCH)
        native_cols = rate(lambda n=native: bf.decode_raw(n), RECORDS_PER_BATCH)
        print(
            f"{codec.name:6s} Kafka batch -> kvlog columns {to_columns / 1e6:5.2f} M rec/s | "
            f"kvlog batch -> Kafka batch {to_kafka / 1e6:5.2f} M rec/s | "
            f"(native decode_raw {native_cols / 1e6:5.2f} M rec/s)"
        )


if __name__ == "__main__":
    main()
