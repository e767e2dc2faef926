"""Transaction markers: Kafka's control batches, as kvlog stores them (magic 2).

When a transaction coordinator has decided a transaction, the leader of every partition
the transaction wrote to appends one control batch for it: a commit or an abort marker.
It is Kafka's format exactly (a RecordBatch v2 minus its first 12 bytes, like every Kafka
batch kvlog stores; :mod:`kvlog.kafka_batch`), so Kafka clients read it as they read
Kafka's own markers:

- attributes: bit 5 (control) and bit 4 (transactional) set, no compression;
- the producer id and epoch of the transaction, base sequence -1, one record;
- the control record's key: ``version`` int16 (0) and ``type`` int16 (0 abort, 1 commit);
  its value: ``version`` int16 (0) and ``coordinator_epoch`` int32.

Readers skip control batches (they hold no user record); a ``read_committed`` reader learns
from the fetch's aborted-transactions list which producer's records to drop before an
abort marker. Only a partition leader writes one (:func:`kvlog.batch.check_produced`
refuses them from producers); followers copy them as any batch.
"""

from __future__ import annotations

import struct

from crc32c import crc32c

from . import kafka_batch
from .batch import CONTROL_BIT, HEADER_SIZE, KAFKA_MAGIC, NO_LEADER_EPOCH, TRANSACTIONAL_BIT
from .errors import CorruptRecordError

ABORT = 0
COMMIT = 1

_PREFIX = struct.Struct(">ibI")
_BODY = struct.Struct(">hiqqqhii")
_KEY = struct.Struct(">hh")  # version, type
_VALUE = struct.Struct(">hi")  # version, coordinator epoch
# The one record, every field fixed: length 16 (zigzag 0x20), attributes 0, timestamp
# delta 0, offset delta 0, key length 4 (zigzag 0x08), key, value length 6 (zigzag 0x0c),
# value, no headers.
_RECORD = struct.Struct(">bbbbb4sb6sb")


def build(
    producer_id: int,
    producer_epoch: int,
    marker: int,
    *,
    timestamp_ms: int,
    coordinator_epoch: int = 0,
) -> bytes:
    """A commit (``COMMIT``) or abort (``ABORT``) marker in kvlog's stored form."""
    if marker not in (ABORT, COMMIT):
        raise ValueError(f"marker type {marker}: 0 (abort) or 1 (commit)")
    record = _RECORD.pack(
        0x20,
        0,
        0,
        0,
        0x08,
        _KEY.pack(0, marker),
        0x0C,
        _VALUE.pack(0, coordinator_epoch),
        0,
    )
    body = _BODY.pack(
        CONTROL_BIT | TRANSACTIONAL_BIT,
        0,
        timestamp_ms,
        timestamp_ms,
        producer_id,
        producer_epoch,
        -1,
        1,
    )
    crc = crc32c(record, crc32c(body))
    return _PREFIX.pack(NO_LEADER_EPOCH, KAFKA_MAGIC, crc) + body + record


def marker_type(stored: bytes | memoryview) -> int:
    """``COMMIT`` or ``ABORT``: the type of a stored control batch's marker (its first
    record's key). Raises CorruptRecordError for a batch that is not a marker."""
    header, cols = kafka_batch.decode(stored, verify=False)
    if not header.attributes & CONTROL_BIT or len(stored) < HEADER_SIZE:
        raise CorruptRecordError("not a control batch")
    key = cols.keys[0] if cols.keys else None
    if key is None or len(key) < _KEY.size:
        raise CorruptRecordError("control record without a version and type key")
    _version, kind = _KEY.unpack_from(key)
    if kind not in (ABORT, COMMIT):
        raise CorruptRecordError(f"control record of unknown type {kind}")
    return int(kind)


__all__ = ["ABORT", "COMMIT", "build", "marker_type"]
