"""``kvlog dump``: a log dir's partitions, batches and records straight from LMDB.

Opens the LMDB environment read-only (LMDB readers never block the node writing it, so
this works while the broker runs) and reads in short transactions of about 4 MiB each.
For every partition: log start offset, high watermark (as last stored: a leader may
store it a moment after acknowledging), log end offset and size; for every
batch its header and whether its CRC32C holds; with ``--records`` every record. A batch
that does not decode is reported and skipped, never fatal: this is a debugging tool.

``--json`` prints JSON Lines: one object per partition, batch and record, each with a
``type`` field (``partition``, ``batch``, ``record``). Keys, values and header values are
UTF-8 text, or null with a ``<field>_base64`` beside them when they are not UTF-8.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from .common import Command, json_bytes, short_repr

READ_CHUNK_BYTES = 4 << 20
FORMATS = {1: "kvlog", 2: "kafka"}  # by magic byte


def iso_ms(ms: int) -> str:
    if ms < 0:
        return "-"
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"
    except (OverflowError, OSError, ValueError):
        return "?"


def read_batches(store: Any, tp: Any, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(base offset, batch bytes) from ``start`` to ``end``, a few MiB per transaction.
    If retention moves the log start past the position, carry on from the new start."""
    from kvlog.batch import next_offset
    from kvlog.errors import OffsetOutOfRangeError

    offset = start
    while offset < end:
        try:
            with store.reader() as r:
                chunk = r.read(tp, offset, READ_CHUNK_BYTES)
        except OffsetOutOfRangeError:
            with store.reader() as r:
                now = r.offsets(tp)
            if now.log_start_offset <= offset:
                return  # truncated below us: nothing more to read
            offset = now.log_start_offset
            continue
        if not chunk:
            return
        yield from chunk
        base, data = chunk[-1]
        offset = next_offset(base, data)


def _batch_info(base: int, data: bytes) -> dict[str, Any]:
    from kvlog.batch import read_header, validate
    from kvlog.errors import KvlogError

    try:
        h = read_header(data)
    except KvlogError as exc:
        return {"type": "batch", "base_offset": base, "size": len(data), "error": exc.message}
    try:
        validate(data)
        crc = "ok"
    except KvlogError as exc:
        crc = exc.message
    return {
        "type": "batch",
        "base_offset": base,
        "format": FORMATS.get(h.magic, f"magic {h.magic}"),
        "last_offset": base + h.last_offset_delta,
        "record_count": h.record_count,
        "leader_epoch": h.partition_leader_epoch,
        "codec": h.codec.name.lower(),
        "timestamp_type": "LogAppendTime" if h.timestamp_type else "CreateTime",
        "producer_id": h.producer_id,
        "producer_epoch": h.producer_epoch,
        "base_sequence": h.base_sequence,
        "first_timestamp": h.first_timestamp,
        "max_timestamp": h.max_timestamp,
        "size": len(data),
        "crc": crc,
    }


def _batch_line(info: dict[str, Any]) -> str:
    if "error" in info:
        return f"  batch @{info['base_offset']} size {info['size']}: UNREADABLE ({info['error']})"
    return (
        f"  batch @{info['base_offset']}..{info['last_offset']} {info['format']} "
        f"count {info['record_count']} "
        f"epoch {info['leader_epoch']} codec {info['codec']} producer "
        f"{info['producer_id']}/{info['producer_epoch']} seq {info['base_sequence']} "
        f"ts {iso_ms(info['first_timestamp'])}..{iso_ms(info['max_timestamp'])} "
        f"size {info['size']} crc {info['crc'] if info['crc'] == 'ok' else 'BAD: ' + info['crc']}"
    )


def _record_json(tp: Any, rec: Any) -> dict[str, Any]:
    headers = []
    for name, value in rec.headers:
        headers.append({"name": name, **json_bytes("value", value)})
    return {
        "type": "record",
        "topic": tp.topic,
        "partition": tp.partition,
        "offset": rec.offset,
        "timestamp": rec.timestamp,
        **json_bytes("key", rec.key),
        **json_bytes("value", rec.value),
        "headers": headers,
    }


def _record_line(rec: Any, limit: int) -> str:
    headers = ", ".join(f"{n}={short_repr(v, limit)}" for n, v in rec.headers)
    return (
        f"    offset {rec.offset} ts {rec.timestamp} ({iso_ms(rec.timestamp)}) "
        f"key {short_repr(rec.key, limit)} value {short_repr(rec.value, limit)}"
        + (f" headers [{headers}]" if headers else "")
    )


@click.command(cls=Command)
@click.option(
    "--log-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="An LMDB log dir (e.g. DATA_DIR/logs/0).",
)
@click.option("--topic", default=None, help="Only this topic.")
@click.option("--partition", type=click.IntRange(min=0), default=None, help="Only this partition.")
@click.option("--records", "show_records", is_flag=True, help="Print every record too.")
@click.option(
    "--max-bytes",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="Cut each printed key/value repr at this length (0: never). Not for --json.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: partition, batch, record.")
def dump(
    log_dir: Path,
    topic: str | None,
    partition: int | None,
    show_records: bool,
    max_bytes: int,
    as_json: bool,
) -> None:
    """Print a log dir's partitions (offsets), batches (headers) and, with --records,
    records, read-only from its LMDB files (safe while the broker runs)."""
    from kvlog.batch import decode
    from kvlog.errors import KvlogError
    from kvlog.lmdb_store import LogDir

    if not (log_dir / "data.mdb").is_file():
        hint = (
            f"; its log dirs are {', '.join(str(p) for p in sorted((log_dir / 'logs').iterdir()))}"
            if (log_dir / "logs").is_dir()
            else ""
        )
        raise click.ClickException(f"{log_dir} is not a kvlog log dir (no data.mdb){hint}")
    store = LogDir(log_dir, readonly=True)
    try:
        tps = [
            tp
            for tp in store.partitions()
            if (topic is None or tp.topic == topic)
            and (partition is None or tp.partition == partition)
        ]
        if not tps and not as_json:
            which = " matching" if topic is not None or partition is not None else ""
            click.echo(f"no{which} partitions in {log_dir}")
        for tp in tps:
            with store.reader() as r:
                state = r.offsets(tp)
            if as_json:
                click.echo(
                    json.dumps(
                        {
                            "type": "partition",
                            "topic": tp.topic,
                            "partition": tp.partition,
                            "log_start_offset": state.log_start_offset,
                            "high_watermark": state.high_watermark,
                            "log_end_offset": state.log_end_offset,
                            "size": state.size_bytes,
                        }
                    )
                )
            else:
                click.echo(
                    f"{tp.topic}-{tp.partition}: log start {state.log_start_offset}, high "
                    f"watermark {state.high_watermark}, log end {state.log_end_offset}, "
                    f"{state.size_bytes} bytes"
                )
            for base, data in read_batches(store, tp, state.log_start_offset, state.log_end_offset):
                info = _batch_info(base, data)
                info.update(topic=tp.topic, partition=tp.partition)
                click.echo(json.dumps(info) if as_json else _batch_line(info))
                if not show_records or "error" in info:
                    continue
                try:
                    records = decode(data, base)
                except KvlogError as exc:
                    message = f"records do not decode: {exc.message}"
                    click.echo(
                        json.dumps({"type": "error", "base_offset": base, "error": message})
                        if as_json
                        else f"    {message}"
                    )
                    continue
                for rec in records:
                    click.echo(
                        json.dumps(_record_json(tp, rec))
                        if as_json
                        else _record_line(rec, max_bytes)
                    )
    finally:
        store.close()
