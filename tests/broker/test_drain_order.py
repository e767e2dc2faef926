"""A drain dispatches ``first_ops`` before the other requests it read (the node: fetches
before produce requests, workers/zmq_server.py), each group in arrival order; bad
requests still get their error replies."""

from __future__ import annotations

import time
from typing import Any

import pytest
import zmq

from kvlog.ipc import wire
from kvlog.workers.zmq_server import Server, bind_router


class _Recorder(Server):
    name = "test"

    def __init__(self, *args: Any, first: frozenset[str]) -> None:
        super().__init__(*args)
        self.first_ops = first
        self.seen: list[tuple[str, int]] = []

    def op_slow(self, req: Any, peer: bytes) -> dict[str, Any]:
        self.seen.append(("slow", req.id))
        return {}

    def op_fast(self, req: Any, peer: bytes) -> dict[str, Any]:
        self.seen.append(("fast", req.id))
        return {}


def _run(first: frozenset[str]) -> tuple[list[tuple[str, int]], set[int]]:
    ctx = zmq.Context()
    try:
        router, endpoint = bind_router(ctx, "tcp://127.0.0.1:0")
        server = _Recorder(ctx, router, first=first)
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        ops = ["slow", "fast", "slow", "bad", "fast"]
        for rid, op in enumerate(ops, 1):
            if op == "bad":
                sock.send(b"\xff not cbor")  # undecodable: an error reply, no id
            else:
                sock.send(wire.encode(wire.request_header(op, rid)))
        # All five in the router's queue before one turn drains them.
        deadline = time.monotonic() + 10
        while server.router.getsockopt(zmq.EVENTS) & zmq.POLLIN == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)
        server.run_once(50)
        replies: set[int] = set()
        errors = 0
        while sock.poll(1000) and len(replies) + errors < len(ops):
            header = wire.decode_header(sock.recv_multipart()[0])
            if wire.reply_error(header) is not None:
                errors += 1
            else:
                replies.add(header["id"])
        assert errors == 1, "the undecodable request got its error reply"
        server.close()
        return server.seen, replies
    finally:
        ctx.destroy(linger=0)


@pytest.mark.timeout(30)
def test_first_ops_go_first_in_arrival_order() -> None:
    seen, replies = _run(frozenset({"fast"}))
    assert seen == [("fast", 2), ("fast", 5), ("slow", 1), ("slow", 3)]
    assert replies == {1, 2, 3, 5}


@pytest.mark.timeout(30)
def test_without_first_ops_arrival_order() -> None:
    seen, replies = _run(frozenset())
    assert seen == [("slow", 1), ("fast", 2), ("slow", 3), ("fast", 5)]
    assert replies == {1, 2, 3, 5}
