"""Generated bad requests at every op of the broker, node and coordinator endpoints.

Each endpoint gets, from a raw DEALER, hypothesis-generated requests of three kinds:

- broken envelopes: random bytes, CBOR that is not a map, maps without a usable ``id``,
  a wrong ``v``, an unknown or non-text ``op``, non-text field names, empty frames;
- every op the server handles (read from its ``handlers``), with a table of each op's
  fields and at least one field broken: a wrong type, a number out of range (huge,
  negative), a string too long, a required field missing, a bad entry in a list;
- (node) produce requests whose frames are not batches, have a bad CRC or magic, or do
  not match the partition count.

Every request must get, within a timeout, a reply with its id (null when the request had
no usable id) carrying an ``error`` code (UNKNOWN_SERVER_ERROR, a handler crash, does
not count). Afterwards every process still runs with the same pid and was never
restarted, a normal produce/consume round trip works, and the records stored before the
fuzz read back identically with unchanged end offsets.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cbor2
import pytest
from brokertest_util import RawClient, leader_endpoint, pid_alive, read_partitions, unique_topic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvlog
from kvlog.batch import build_batch
from kvlog.errors import ErrorCode
from kvlog.ipc import wire
from kvlog.ipc.kafka.scram import scram_credential
from kvlog.types import TopicPartition
from kvlog.workers.broker_shell import FORWARDED_OPS, BrokerServer
from kvlog.workers.coordinator_shell import CoordinatorServer
from kvlog.workers.node_shell import NodeServer

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
INT32_MAX = (1 << 31) - 1
REPLY_TIMEOUT_S = 5.0
REQUEST_MAX_BYTES = 256 << 10
MAX_FRAME_BYTES = 4 << 20
TARGET = "fuzz-target"  # produce/fetch fuzz lands here; the kept topic is another one


# -- the ops' fields -------------------------------------------------------------------------


@dataclass(frozen=True)
class F:
    """One request field: its kind, a harmless valid value, and what makes it invalid."""

    kind: str  # int, str, bool, map, list
    valid: Any
    required: bool = False  # missing is an error
    nullable: bool = False  # an explicit null is legal (means "not given")
    low: int = INT64_MIN
    high: int = INT64_MAX
    max_len: int | None = None
    items: F | None = None  # list of scalars
    entry: dict[str, F] | None = None  # list of maps
    pair: bool = False  # list of [topic, partition]
    truthy_only: bool = False  # read as `value or default`: falsy wrong values are legal


def I(valid: Any, low: int = INT64_MIN, high: int = INT64_MAX, **kw: Any) -> F:  # noqa: E743
    return F("int", valid, low=low, high=high, **kw)


def S(valid: Any, max_len: int = 1 << 16, **kw: Any) -> F:
    return F("str", valid, max_len=max_len, **kw)


PARTITION = I(0, 0, (1 << 20) - 1, required=True)
TOPIC = S(TARGET, 249, required=True)
GROUP = S("fuzz-group", 1024, required=True)
PAIRS = F("list", [[TARGET, 0]], pair=True, max_len=100_000)

FETCH_ENTRY = {
    "topic": TOPIC,
    "partition": PARTITION,
    "offset": I(0, 0, required=True),
    "max_bytes": I(1024, 1, INT32_MAX),
    "last_fetched_epoch": I(-1, -1, INT32_MAX),
    "leader_epoch": I(-1, -1, INT32_MAX),
}
OFFSET_ENTRY = {"topic": TOPIC, "partition": PARTITION, "timestamp": I(-1)}
COMMIT_ENTRY = {
    "topic": TOPIC,
    "partition": PARTITION,
    "offset": I(0, 0, required=True),
    "metadata": S(""),
}

SCRAM_CREDENTIAL = scram_credential("SCRAM-SHA-256", "fuzz").to_wire()

# An unknown transactional id: every transaction op is refused before it does anything.
TXN_PRODUCER = {
    "transactional_id": S("fz-none", 32_767, required=True),
    "producer_id": I(1 << 40, 0, required=True),
    "producer_epoch": I(0, 0, 32_767, required=True),
}
MARKER_ENTRY = {
    "topic": S("fz-none", 249, required=True),
    "partition": PARTITION,
    "producer_id": I(1 << 40, 0, required=True),
    "producer_epoch": I(0, 0, required=True),
    "committed": F("bool", False, required=True),
    "leader_epoch": I(-1, -1, INT32_MAX),
    "coordinator_epoch": I(0, 0, INT32_MAX),
}

# Valid values are harmless on purpose (unknown names and ids) although a broken field
# must stop every request before it does anything.
COORDINATOR_FIELDS: dict[str, dict[str, F]] = {
    "node_heartbeat": {
        "node_id": I(12345, 0, INT32_MAX, required=True),
        "applied_version": I(-1),
        "wait_ms": I(0, 0, 60_000),
        "endpoint": S("tcp://127.0.0.1:1", required=True),
        "log_dir": S("/nonexistent", required=True),
        "pid": I(0),
        "offline": F("bool", False),
    },
    "node_down": {"node_id": I(12345, 0, INT32_MAX, required=True), "pid": I(1, 0)},
    "alter_isr": {
        "topic": S("fz-none", 249, required=True),
        "partition": PARTITION,
        "isr": F("list", [0], items=I(0, 0, INT32_MAX), max_len=64, required=True),
        "leader": I(0, 0, INT32_MAX, required=True),
        "leader_epoch": I(0, 0, INT32_MAX, required=True),
    },
    "elect_leaders": {
        "topics": F("list", ["fz-none"], items=S("fz-none"), nullable=True, max_len=1 << 16)
    },
    "metadata": {
        "topics": F("list", ["fz-none"], items=S("x", 4096), nullable=True, max_len=1 << 16)
    },
    "watch_metadata": {"version": I(1 << 40), "wait_ms": I(0, 0, 60_000)},
    "create_topic": {
        "name": S("fz-never-created", 4096, required=True),
        "partitions": I(1, -(1 << 31), INT32_MAX),
        "replication_factor": I(1, -(1 << 31), INT32_MAX),
        "config": F("map", {}, truthy_only=True),
    },
    "delete_topic": {"name": S("fz-none", 4096, required=True)},
    "create_partitions": {
        "name": S("fz-none", 4096, required=True),
        "count": I(2, -(1 << 31), INT32_MAX, required=True),
    },
    "alter_topic_config": {
        "name": S("fz-none", 4096, required=True),
        "config": F("map", {}, required=True),
    },
    "acl_add": {
        "principal": S("fz", 1024, required=True),
        "resource_type": S("topic", 32, required=True),
        "name": S("fz-none", 1024),
        "operation": S("read", 32, required=True),
    },
    "acl_remove": {
        k: S("fz-none", 1024, nullable=True)
        for k in ("principal", "resource_type", "name", "operation")
    },
    "join_group": {
        "group_id": GROUP,
        "member_id": S("", 1024),
        "group_instance_id": S("fz", 1024, nullable=True),
        "client_id": S("fz", 1024),
        "session_timeout_ms": I(10_000, 0, INT32_MAX),
        "rebalance_timeout_ms": I(10_000, 0, INT32_MAX),
        "protocol_type": S("consumer", 255),
        "protocols": F("list", [["range", b""]], max_len=64),
        "server_assignor": S("range", 255, nullable=True),
        "topics": F("list", [TARGET], items=S(TARGET, 249), max_len=100_000),
        "owned": F("list", [], pair=True, max_len=1 << 16),
    },
    "sync_group": {
        "group_id": GROUP,
        "generation": I(1, -1, INT32_MAX, required=True),
        "member_id": S("fz", 1024, required=True),
        "group_instance_id": S("fz", 1024, nullable=True),
        "assignments": F(
            "list",
            [],
            entry={"member_id": S("fz", required=True), "assignment": F("bytes", b"")},
            nullable=True,
            max_len=1 << 16,
        ),
    },
    "heartbeat": {
        "group_id": GROUP,
        "generation": I(1, -1, INT32_MAX, required=True),
        "member_id": S("fz", 1024, required=True),
        "group_instance_id": S("fz", 1024, nullable=True),
    },
    "leave_group": {
        "group_id": GROUP,
        "members": F(
            "list",
            [{"member_id": "fz"}],
            entry={"member_id": S("fz"), "group_instance_id": S("fz", nullable=True)},
            required=True,
            max_len=10_000,
        ),
    },
    "offset_commit": {
        "group_id": GROUP,
        "generation": I(-1, -1, INT32_MAX),
        "member_id": S("", 1024),
        "group_instance_id": S("fz", 1024, nullable=True),
        "offsets": F("list", [], entry=COMMIT_ENTRY, required=True, max_len=100_000),
    },
    "offset_fetch": {
        "group_id": GROUP,
        "partitions": F("list", [[TARGET, 0]], pair=True, nullable=True, max_len=1 << 16),
    },
    "describe_groups": {
        "group_ids": F("list", ["fz"], items=S("fz", 1024), required=True, max_len=10_000)
    },
    "delete_groups": {
        "group_ids": F("list", ["fz-none"], items=S("fz", 1024), required=True, max_len=10_000)
    },
    "user_upsert": {
        "name": S("fz-user", 1024, required=True),
        "credentials": F(
            "list",
            [SCRAM_CREDENTIAL],
            entry={
                "mechanism": S("SCRAM-SHA-256", required=True),
                "salt": F("bytes", SCRAM_CREDENTIAL["salt"], required=True),
                "stored_key": F("bytes", SCRAM_CREDENTIAL["stored_key"], required=True),
                "server_key": F("bytes", SCRAM_CREDENTIAL["server_key"], required=True),
                "iterations": I(4096, 4096, 16384, required=True),
            },
            required=True,
            max_len=2,
        ),
    },
    "user_remove": {"name": S("fz-none", 1024, required=True)},
    "user_list": {},
    "kafka_relay": {"principal": S("fz", 1024, required=True), "client_host": S("", 256)},
    "init_producer_id": {
        "transactional_id": S(None, 32_767, nullable=True),
        "transaction_timeout_ms": I(60_000, -(1 << 31), INT32_MAX),
    },
    "add_partitions_to_txn": {
        **TXN_PRODUCER,
        "partitions": F("list", [["fz-none", 0]], pair=True, required=True, max_len=100_000),
    },
    "add_offsets_to_txn": {**TXN_PRODUCER, "group_id": GROUP},
    "end_txn": {**TXN_PRODUCER, "committed": F("bool", False, required=True)},
    "txn_offset_commit": {
        **TXN_PRODUCER,
        "group_id": GROUP,
        "offsets": F("list", [], entry=COMMIT_ENTRY, required=True, max_len=100_000),
    },
    "acl_list": {},
    "list_groups": {},
    "ping": {},
}

NODE_FIELDS: dict[str, dict[str, F]] = {
    "produce": {
        "acks": I(1, -1, 1),
        "timeout_ms": I(1000, 0, INT32_MAX),
        "partitions": F("list", [[TARGET, 0]], pair=True, required=True, max_len=100_000),
    },
    "fetch": {
        "max_wait_ms": I(0, 0, INT32_MAX),
        "min_bytes": I(0, 0, INT32_MAX),
        "max_bytes": I(1024, 1, INT32_MAX),
        "replica_id": I(-1, -1, INT32_MAX),
        "isolation_level": I(0, 0, 1),
        "partitions": F("list", [{}], entry=FETCH_ENTRY, required=True, max_len=100_000),
    },
    "list_offsets": {
        "partitions": F("list", [{}], entry=OFFSET_ENTRY, required=True, max_len=100_000),
        "isolation_level": I(0, 0, 1),
    },
    "write_txn_markers": {
        "markers": F("list", [{}], entry=MARKER_ENTRY, required=True, max_len=100_000),
        "timeout_ms": I(5000, 0, INT32_MAX),
    },
    "ping": {},
}

BROKER_FIELDS: dict[str, dict[str, F]] = {
    "metadata": COORDINATOR_FIELDS["metadata"],
    "find_coordinator": {},
    "ping": {},
    **{op: COORDINATOR_FIELDS[op] for op in FORWARDED_OPS},
}


def _ops(server: type) -> set[str]:
    return {name[3:] for name in dir(server) if name.startswith("op_")}


ENDPOINT_FIELDS = {
    "broker": BROKER_FIELDS,
    "node": NODE_FIELDS,
    "coordinator": COORDINATOR_FIELDS,
}
SERVER_CLASSES = {"broker": BrokerServer, "node": NodeServer, "coordinator": CoordinatorServer}


def test_the_field_table_covers_every_op() -> None:
    """Every op a server handles is fuzzed with its fields (update the table when an op
    is added, so the new op gets the same treatment)."""
    handled = {
        "broker": _ops(BrokerServer) | set(FORWARDED_OPS),
        "node": _ops(NodeServer),
        "coordinator": _ops(CoordinatorServer),
    }
    for name, ops in handled.items():
        missing = sorted(ops - set(ENDPOINT_FIELDS[name]))
        assert not missing, f"{name} ops without a field table here: {missing}"


# -- strategies ------------------------------------------------------------------------------

OTHER_TYPES: dict[str, list[Any]] = {
    "int": ["1", 1.5, True, b"\x01", [1], {"a": 1}, float("nan")],
    "str": [1, 0, 1.5, True, b"text", ["a"], {"a": "b"}],
    "bool": [1, 0, "true", None, [], {}],
    "map": [1, "x", [1], True, b"x", 2.5],
    "list": [1, "x", {"a": 1}, True, b"x", 2.5],
    "bytes": ["text", 1, [1], {}],
}
FALSY = (0, "", [], {}, False, None, b"", 0.0)


def _out_of_range(spec: F) -> list[int]:
    out = [INT64_MAX + 1, 1 << 64, INT64_MIN - 1, -(1 << 64), 1 << 200]
    if spec.low > INT64_MIN:
        out += [spec.low - 1, spec.low - (1 << 31), INT64_MIN]
    if spec.high < INT64_MAX:
        out += [spec.high + 1, spec.high + (1 << 31), INT64_MAX]
    return out


def broken_value(spec: F) -> st.SearchStrategy[Any]:
    """Values that make the field invalid."""
    choices: list[st.SearchStrategy[Any]] = []
    wrong = [v for v in OTHER_TYPES[spec.kind] if not (spec.truthy_only and v in FALSY)]
    if not spec.nullable and not spec.truthy_only and spec.kind != "bool":
        wrong.append(None)
    choices.append(st.sampled_from(wrong))
    if spec.kind == "int":
        choices.append(st.sampled_from(_out_of_range(spec)))
    if spec.kind == "str" and spec.max_len is not None and spec.max_len <= 1 << 16:
        choices.append(st.just("x" * (spec.max_len + 1)))
    if spec.kind == "list":
        choices.append(broken_list(spec))
    return st.one_of(choices)


def broken_pair() -> st.SearchStrategy[Any]:
    return st.sampled_from(
        [
            "t-0",
            [TARGET],
            [TARGET, 0, 1],
            [1, 0],
            [TARGET, -1],
            [TARGET, 1 << 20],
            [TARGET, "0"],
            [TARGET, True],
            [None, 0],
            {"topic": TARGET},
            {"topic": TARGET, "partition": -5},
            [TARGET * 30, 0],
        ]
    )


@st.composite
def broken_entry(draw: st.DrawFn, entry: dict[str, F]) -> Any:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from([1, "x", [1, 2], None, True, b"x"]))  # not a map
    good = {k: f.valid for k, f in entry.items()}
    name = draw(st.sampled_from(sorted(entry)))
    spec = entry[name]
    if spec.required and draw(st.booleans()):
        del good[name]
    else:
        good[name] = draw(broken_value(spec))
    return good


@st.composite
def broken_list(draw: st.DrawFn, spec: F) -> list[Any]:
    if spec.pair:
        bad = draw(broken_pair())
        good = [TARGET, 0]
    elif spec.entry is not None:
        bad = draw(broken_entry(spec.entry))
        good = {k: f.valid for k, f in spec.entry.items()}
    elif spec.items is not None:
        bad = draw(broken_value(spec.items))
        good = spec.items.valid
    else:
        bad = draw(st.sampled_from([1, "x", None, [1, 2, 3], ["only-name"], [1, b""]]))
        good = spec.valid[0] if spec.valid else None
    if spec.max_len is not None and spec.max_len <= 64 and draw(st.integers(0, 5)) == 0:
        return [good] * (spec.max_len + 1)  # too many entries
    before = draw(st.integers(0, 2))
    return [good] * before + [bad]


@dataclass
class Case:
    parts: list[bytes]
    expect_id: int | None
    error_required: bool = True
    frames_note: str = ""
    fields: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Case(expect_id={self.expect_id}, head={self.parts[0][:200]!r}{self.frames_note})"


_ids = itertools.count(1000)


@st.composite
def broken_field_request(draw: st.DrawFn, table: dict[str, dict[str, F]]) -> Case:
    op = draw(st.sampled_from(sorted(table)))
    fields_spec = table[op]
    rid = next(_ids)
    fields: dict[str, Any] = {}
    for name, spec in fields_spec.items():
        if spec.required or draw(st.booleans()):
            fields[name] = spec.valid
    if "partitions" in fields_spec and fields_spec["partitions"].entry is not None:
        fields["partitions"] = [{k: f.valid for k, f in fields_spec["partitions"].entry.items()}]
    frames: list[bytes] = []
    if op == "produce":
        frames = [b"not a batch"]
    if not fields_spec:  # nothing to break: an extra field and extra frames are harmless
        fields["fz_extra"] = draw(st.sampled_from([1, "x", [1], {"a": None}, None]))
        if draw(st.booleans()):
            frames = [b"extra frame"]
        header = wire.request_header(op, rid, **fields)
        return Case([cbor2.dumps(header), *frames], rid, error_required=False, fields=header)
    broken = draw(
        st.lists(st.sampled_from(sorted(fields_spec)), min_size=1, max_size=3, unique=True)
    )
    for name in broken:
        spec = fields_spec[name]
        if spec.required and draw(st.integers(0, 3)) == 0:
            fields.pop(name, None)
        else:
            fields[name] = draw(broken_value(spec))
    header = wire.request_header(op, rid, **fields)
    return Case([cbor2.dumps(header), *frames], rid, fields=header)


@st.composite
def broken_envelope(draw: st.DrawFn, ops: list[str]) -> Case:
    kind = draw(st.integers(0, 8))
    rid = next(_ids)
    if kind == 0:
        raw = draw(st.binary(max_size=64))
        return Case([raw], _usable_id(raw))
    if kind == 1:  # CBOR, not a map
        value = draw(
            st.one_of(
                st.integers(INT64_MIN, INT64_MAX),
                st.text(max_size=8),
                st.lists(st.integers(), max_size=4),
                st.binary(max_size=8),
                st.none(),
                st.floats(allow_nan=True),
            )
        )
        return Case([cbor2.dumps(value)], None)
    if kind == 2:  # no usable id
        bad_id = draw(st.sampled_from([None, -1, "7", 1.5, True, INT64_MAX + 1, [1], {"a": 1}]))
        header: dict[Any, Any] = {"v": 1, "op": draw(st.sampled_from(ops))}
        if bad_id is not None:
            header["id"] = bad_id
        return Case([cbor2.dumps(header)], None)
    if kind == 3:  # wrong v
        v = draw(st.sampled_from([0, 2, -1, "1", 1.0, True, None, [1], 1 << 70]))
        header = {"v": v, "id": rid, "op": draw(st.sampled_from(ops))}
        if draw(st.booleans()):
            del header["v"]
        return Case([cbor2.dumps(header)], rid)
    if kind == 4:  # unknown or non-text op
        op = draw(
            st.one_of(
                st.text(max_size=12).filter(lambda o: o not in ops),
                st.sampled_from([1, None, ["ping"], {"op": "ping"}, b"ping", True]),
                st.sampled_from(["__init__", "dispatch", "close", "op_ping", "PING", "ping "]),
            )
        )
        header = {"v": 1, "id": rid}
        if draw(st.integers(0, 4)):
            header["op"] = op
        return Case([cbor2.dumps(header)], rid)
    if kind == 5:  # non-text field names
        header = {"v": 1, "id": rid, "op": draw(st.sampled_from(ops))}
        header[draw(st.sampled_from([1, b"topic", -7]))] = "x"
        return Case([cbor2.dumps(header)], rid)
    if kind == 6:  # empty frame 0, maybe with more empty frames
        return Case([b""] * draw(st.integers(1, 3)), None)
    if kind == 7:  # truncated or trailing garbage CBOR map
        raw = cbor2.dumps({"v": 1, "id": rid, "op": draw(st.sampled_from(ops))})
        cut = draw(st.integers(1, len(raw) - 1))
        return Case([raw[:cut]], None)
    # an extra field holding a CBOR tag (dates, bignums, sets, unknown tags): ops without
    # required fields may succeed, so only a reply (and no crash) is required
    tag = cbor2.CBORTag(
        draw(st.sampled_from([0, 1, 2, 30, 258, 55799, 1 << 40])),
        draw(st.sampled_from(["x", 1, b"\xff", [1, 2]])),
    )
    raw = cbor2.dumps({"v": 1, "id": rid, "op": draw(st.sampled_from(ops)), "fz": tag})
    decodes = _usable_id(raw) is not None  # a malformed tag (a bad date) fails the decode
    return Case([raw], rid if decodes else None, error_required=not decodes)


def _usable_id(raw: bytes) -> int | None:
    try:
        header = cbor2.loads(raw)
    except Exception:
        return None
    return wire.peek_id(header) if isinstance(header, dict) else None


@st.composite
def broken_produce_frames(draw: st.DrawFn) -> Case:
    rid = next(_ids)
    good = build_batch([(b"k", b"v")])
    kind = draw(st.integers(0, 6))
    count = 1
    if kind == 0:
        frames = [draw(st.binary(max_size=100))]
    elif kind == 1:  # a flipped byte in the part the CRC covers (or the CRC, or magic)
        pos = draw(st.integers(4, len(good) - 1))
        flipped = bytearray(good)
        flipped[pos] ^= draw(st.integers(1, 255))
        frames = [bytes(flipped)]
    elif kind == 2:  # truncated
        frames = [good[: draw(st.integers(0, len(good) - 1))]]
    elif kind == 3:  # more frames than partitions
        frames = [good, good]
    elif kind == 4:  # fewer frames than partitions
        count, frames = 2, [good]
    elif kind == 5:  # no frame
        frames = []
    else:  # a good batch plus garbage appended: CRC covers the garbage, so it fails
        frames = [good + draw(st.binary(min_size=1, max_size=16))]
    header = wire.request_header(
        "produce", rid, acks=draw(st.sampled_from([1, -1])), partitions=[[TARGET, 0]] * count
    )
    return Case([cbor2.dumps(header), *frames], rid, frames_note=f" produce kind {kind}")


# -- the broker under test -------------------------------------------------------------------


@dataclass
class Target:
    broker: Any
    endpoints: dict[str, str]
    pids: dict[str, int]
    kept: dict[TopicPartition, list[tuple[int, Any, Any, Any]]]
    kept_ends: dict[TopicPartition, int]
    clients: dict[str, RawClient] = field(default_factory=dict)


def _snapshot(bootstrap: str, tps: list[TopicPartition]) -> dict[TopicPartition, list[Any]]:
    read = read_partitions(bootstrap, tps)
    return {tp: [(r.offset, r.key, r.value, r.headers) for r in rs] for tp, rs in read.items()}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    config = {
        "socket.request.max.bytes": REQUEST_MAX_BYTES,
        "max.frame.bytes": MAX_FRAME_BYTES,
    }
    broker = kvlog.Broker(
        data_dir=tmp_path_factory.mktemp("fuzz"),
        listen="tcp://127.0.0.1:0",
        console_listen="none",
        config=config,
    ).start()
    try:
        kept_topic = unique_topic("fuzz-keep")
        with kvlog.Admin(bootstrap_servers=broker.bootstrap) as admin:
            admin.create_topic(kept_topic, partitions=2)
            admin.create_topic(TARGET, partitions=1)
        with kvlog.Producer(bootstrap_servers=broker.bootstrap, linger_ms=0) as producer:
            for i in range(40):
                producer.send(
                    kept_topic,
                    value=b"v%d" % i,
                    key=b"k%d" % (i % 7),
                    headers=[("h", b"%d" % i)],
                )
            producer.flush()
        tps = [TopicPartition(kept_topic, p) for p in range(2)]
        kept = _snapshot(broker.bootstrap, tps)
        consumer = kvlog.Consumer(bootstrap_servers=broker.bootstrap)
        kept_ends = consumer.end_offsets(tps)
        consumer.close()
        node = leader_endpoint(broker.bootstrap, TopicPartition(TARGET, 0))
        endpoints = {
            "broker": broker.bootstrap,
            "node": node,
            "coordinator": broker.coordinator_endpoint,
        }
        pids = {f"{c.role}{c.node_id or ''}": c.pid for c in broker.children}
        clients = {name: RawClient(ep) for name, ep in endpoints.items()}
        try:
            yield Target(broker, endpoints, pids, kept, kept_ends, clients)
        finally:
            for client in clients.values():
                client.close()
    finally:
        broker.stop()


def _exchange(target: Target, name: str, case: Case) -> None:
    client = target.clients[name]
    client.send_parts(case.parts)
    reply = client.recv(REPLY_TIMEOUT_S)
    assert reply is not None, f"{name}: no reply within {REPLY_TIMEOUT_S} s to {case!r}"
    header, _ = reply
    assert header.get("id") == case.expect_id, (
        f"{name}: reply id {header.get('id')!r}, expected {case.expect_id!r}, to {case!r}"
    )
    code = header.get("error", 0)
    results = header.get("results")
    if not code and isinstance(results, list) and results:  # produce: per-partition errors
        codes = [r.get("error", 0) for r in results]
        code = codes[0] if all(codes) else 0
    assert code != ErrorCode.UNKNOWN_SERVER_ERROR, (
        f"{name}: a handler crashed on {case!r}: {header.get('message')}"
    )
    if case.error_required:
        assert code, f"{name}: no error for a broken request {case!r}; reply {header}"
        assert isinstance(header.get("message", ""), str)


# 300 requests per endpoint in the default run; KVLOG_LONG_TESTS=1 sends 1,800.
FUZZ_SETTINGS = settings(
    max_examples=1800 if os.environ.get("KVLOG_LONG_TESTS") == "1" else 300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _requests(name: str) -> st.SearchStrategy[Case]:
    table = ENDPOINT_FIELDS[name]
    ops = sorted(table)
    options = [broken_envelope(ops), broken_field_request(table), broken_field_request(table)]
    if name == "node":
        options.append(broken_produce_frames())
    return st.one_of(options)


@pytest.mark.parametrize("name", ["broker", "node", "coordinator"])
def test_every_bad_request_gets_an_error_reply(target: Target, name: str) -> None:
    @FUZZ_SETTINGS
    @given(case=_requests(name))
    def run(case: Case) -> None:
        _exchange(target, name, case)

    try:
        run()
    finally:
        # the next test gets a socket with no stale reply queued
        target.clients[name].reconnect()


def test_oversized_requests(target: Target) -> None:
    node = target.clients["node"]
    # a header frame over 1 MiB
    rid = node.next_id()
    header = wire.request_header("ping", rid, pad="x" * (wire.MAX_HEADER_BYTES + 10))
    node.send_parts([cbor2.dumps(header)])
    reply = node.recv(REPLY_TIMEOUT_S)
    assert reply is not None and reply[0]["id"] is None
    assert reply[0]["error"] == ErrorCode.INVALID_REQUEST
    # a produce request over socket.request.max.bytes (message.max.bytes)
    big = build_batch([(None, b"x" * REQUEST_MAX_BYTES)])
    reply, _ = node.request("produce", {"acks": 1, "partitions": [[TARGET, 0]]}, [big])
    assert reply["error"] == ErrorCode.MESSAGE_TOO_LARGE, reply
    # a frame over ZeroMQ's MAXMSGSIZE (max.frame.bytes): ZeroMQ drops the connection, so
    # there is no reply; the node lives on and a new connection is served
    node.send_parts([cbor2.dumps(wire.request_header("ping", 1)), b"x" * (MAX_FRAME_BYTES + 1)])
    assert node.recv(1.0) is None
    node.reconnect()
    reply, _ = node.request("ping", {})
    assert "error" not in reply


def test_after_the_fuzz_everything_still_serves(target: Target) -> None:
    """Runs after the fuzz tests (file order): same processes, intact log, round trip."""
    broker = target.broker
    now = {f"{c.role}{c.node_id or ''}": c.pid for c in broker.children}
    assert now == target.pids, "a process was restarted"
    assert all(c.restarts == 0 for c in broker.children)
    assert all(pid_alive(pid) for pid in now.values())
    tps = sorted(target.kept)
    assert _snapshot(broker.bootstrap, tps) == target.kept, "stored records changed"
    consumer = kvlog.Consumer(bootstrap_servers=broker.bootstrap)
    try:
        assert consumer.end_offsets(tps) == target.kept_ends
    finally:
        consumer.close()
    topic = unique_topic("after-fuzz")
    with kvlog.Admin(bootstrap_servers=broker.bootstrap) as admin:
        admin.create_topic(topic, partitions=1)
    value = uuid.uuid4().bytes
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, acks="all") as producer:
        meta = producer.send(topic, value=value, key=b"k").get(timeout=10)
    tp = TopicPartition(topic, 0)
    records = read_partitions(broker.bootstrap, [tp])[tp]
    assert [(r.offset, r.key, r.value) for r in records] == [(meta.offset, b"k", value)]
