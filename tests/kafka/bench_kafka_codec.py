"""Codec cost per request (not a test): Produce decode and Fetch encode with ~1 MB of
records, through kvlog's adapter and through kafka-python's public calls for comparison.

    PYTHONPATH=$PWD python tests/kafka/bench_kafka_codec.py
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable

from kvlog.ipc.kafka import codec
from kvlog.ipc.kafka.framing import peek_request

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.protocol.consumer import FetchResponse
    from kafka.protocol.producer import ProduceRequest

RECORDS = os.urandom(1 << 20)
PARTITIONS = (1, 16)  # 1 MB in one partition, or spread over 16


def per_call_us(fn: Callable[[], object], seconds: float = 1.0) -> float:
    fn()
    n = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return elapsed / n * 1e6


def produce_frame(partitions: int, version: int = 8) -> bytes:
    share = len(RECORDS) // partitions
    topic = ProduceRequest.TopicProduceData
    request = ProduceRequest(
        version=version,
        transactional_id=None,
        acks=-1,
        timeout_ms=30_000,
        topic_data=[
            topic(
                name="events",
                partition_data=[
                    topic.PartitionProduceData(
                        index=p, records=RECORDS[p * share : (p + 1) * share]
                    )
                    for p in range(partitions)
                ],
            )
        ],
    )
    request.with_header(correlation_id=1, client_id="bench")
    return bytes(request.encode(header=True))


def fetch_response(partitions: int, records: object) -> FetchResponse:
    topic = FetchResponse.FetchableTopicResponse
    part = topic.PartitionData
    return FetchResponse(
        throttle_time_ms=0,
        error_code=0,
        session_id=0,
        responses=[
            topic(
                topic="events",
                partitions=[
                    part(
                        partition_index=p,
                        error_code=0,
                        high_watermark=1000,
                        last_stable_offset=1000,
                        log_start_offset=0,
                        aborted_transactions=None,
                        preferred_read_replica=-1,
                        records=records,
                    )
                    for p in range(partitions)
                ],
            )
        ],
    )


def main() -> None:
    for n in PARTITIONS:
        frame = produce_frame(n)

        def adapter(frame: bytes = frame) -> None:
            api_key, version, _ = peek_request(frame)
            _, body = codec.decode_request(frame, api_key, version)
            assert isinstance(body.topic_data[0].partition_data[0].records, bytes)

        public = per_call_us(lambda f=frame: ProduceRequest.decode(f, version=8, header=True))
        print(
            f"Produce v8 decode, 1 MiB over {n:2d} partition(s): adapter "
            f"{per_call_us(adapter):7.1f} us | kafka-python decode(header=True) {public:7.1f} us"
        )
    share = len(RECORDS) // 16
    for n in PARTITIONS:
        records = RECORDS if n == 1 else RECORDS[:share]
        spliced = fetch_response(n, records)
        copied = fetch_response(n, records)

        copied.API_VERSION = 11

        def public(response: FetchResponse = copied) -> None:
            response.with_header(correlation_id=1)
            response.encode(header=True, framed=True)

        adapter = per_call_us(lambda r=spliced: codec.encode_response(1, 11, 1, r))
        print(
            f"Fetch v11 encode, 1 MiB over {n:2d} partition(s): adapter {adapter:7.1f} us | "
            f"kafka-python encode() copying the records {per_call_us(public):7.1f} us"
        )


if __name__ == "__main__":
    main()
