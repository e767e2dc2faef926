"""A minimal Kafka shell for the listener tests, run as its own process:

    python tests/kafka/kafka_harness.py [max_request_bytes]

A ``zmq_server.Server`` (the loop every kvlog process runs) with a KafkaListener added
through ``add_socket`` and the ApiVersions handler; it prints ``READY <port>``, then one
``REQ {json}`` line per request handled and one ``LOG <message>`` line per log record,
and stops on SIGTERM.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from typing import Any

import zmq

from kvlog.ipc.kafka.api_versions import api_versions_response
from kvlog.ipc.kafka.codec import ApiKey
from kvlog.ipc.kafka.connection import KafkaRequest
from kvlog.workers.kafka_listener import KafkaListener, KafkaToken
from kvlog.workers.zmq_server import Server, bind_router


class HarnessServer(Server):
    name = "harness"

    def __init__(self, ctx: zmq.Context[Any], listener: KafkaListener) -> None:
        router, _ = bind_router(ctx, "tcp://127.0.0.1:0")
        super().__init__(ctx, router)
        self.listener = listener
        self.add_socket(listener.poll_handle(), listener.on_ready)

    def next_timeout_ms(self, now: float) -> float:
        deadline = self.listener.next_deadline()
        return 100.0 if deadline is None else max(0.0, min(100.0, (deadline - now) * 1000))

    def on_timers(self, now: float) -> None:
        self.listener.expire_idle(now)


def on_api_versions(request: KafkaRequest, token: KafkaToken) -> Any:
    response = api_versions_response(request)
    line = {
        "api_key": request.api_key,
        "api_version": request.api_version,
        "client_id": request.client_id,
        "error_code": response.error_code,
    }
    print("REQ " + json.dumps(line), flush=True)
    return response


def main() -> None:
    max_request_bytes = int(sys.argv[1]) if len(sys.argv) > 1 else 100 * 1024 * 1024
    idle_ms = int(sys.argv[2]) if len(sys.argv) > 2 else 600_000
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    listener = KafkaListener(
        {ApiKey.ApiVersions: on_api_versions},
        port=0,
        max_request_bytes=max_request_bytes,
        connections_max_idle_ms=idle_ms,
    )
    _, port = listener.start()
    ctx = zmq.Context()
    server = HarnessServer(ctx, listener)
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "stopping", True))
    print(f"READY {port}", flush=True)
    started = time.monotonic()
    try:
        server.serve_forever(lambda: time.monotonic() - started > 110)
    finally:
        server.close()  # closes the listener too (it is one of its sockets)
        ctx.term()


if __name__ == "__main__":
    main()
