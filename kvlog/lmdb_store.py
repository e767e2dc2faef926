"""The log store on LMDB: one environment per log dir.

Layout inside the environment (named sub-databases; the main DB holds only their names):

- ``p/<topic>/<partition>``: one per partition. Key: 8-byte big-endian base offset of a
  record batch. Value: the batch bytes as the producer built them (leader epoch stamped).
- ``t/partitions``: per-partition offsets, key ``<topic>/<partition>``, value four int64
  (log start, high watermark, log end, size in bytes). Changed in the same transaction
  as the batches, so a crash never shows one without the other.
- ``t/<name>``: small key-value tables (topics, offsets, producers, ...) that must commit
  atomically with appends.

Every commit is durable: the environment opens with ``sync=True, metasync=True`` so a
commit returns after fsync. The map grows by itself (``MapFullError`` -> double and re-run
the transaction; other processes follow on ``MapResizedError``).

Open a ``LogDir`` after spawning, never across ``fork``. One ``LogDir`` may be shared by
threads of one process (an internal lock serialises transactions); several processes may
open the same path (LMDB's own locking; one writer at a time). A write given a
``written`` callback (the node's committer thread, workers/committer.py) lets readers of
other threads run during its commit (the fsync; py-lmdb releases the GIL in it) when it
opened no sub-database handle; writers stay one at a time, so the map never grows under
it. py-lmdb also releases the GIL while ``begin(write=True)`` waits for another process.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import resource
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from . import batch as batch_format
from .batch import BatchHeader
from .errors import KvlogError, OffsetOutOfRangeError, StorageError, UnknownTopicOrPartitionError
from .log import Batch, BatchReplacement, collect_batches, read_limit, replacement_error
from .types import PartitionOffsets, TopicPartition, parse_partition_key, partition_key

log = logging.getLogger(__name__)

T = TypeVar("T")

_KEY = struct.Struct(">Q")
_STATE = struct.Struct(">qqqq")
_STATE_TABLE = "partitions"
_META_TABLE = "meta"


@functools.lru_cache(maxsize=256)
def _table_name(table: str) -> bytes:
    return b"t/" + table.encode()


@functools.lru_cache(maxsize=1 << 16)
def _partition_db_name(tp: TopicPartition) -> bytes:
    return b"p/" + partition_key(tp)


FORMAT_VERSION = 1

DEFAULT_MAP_SIZE = 256 << 20
DEFAULT_MAX_PARTITIONS = 4096
# Grow before a write once the used pages pass this share of the map, so that a
# MapFullError (and the re-run of a whole group commit) stays rare.
_GROW_AT = 0.75
_MAX_WRITE_ATTEMPTS = 16


# Free space below which an I/O error is taken for a full disk (see _looks_full).
_LOW_SPACE = 16 << 20


def _looks_full(path: Path, text: str) -> bool:
    """LMDB reports a short write as EIO ("short write, filesystem full?" in its source):
    a commit whose pwritev runs into a full disk or RLIMIT_FSIZE part-way gets EIO, not
    ENOSPC/EFBIG. Tell that case from a failing disk by looking at the disk and limit."""
    if os.strerror(errno.EIO) not in text:
        return False
    try:
        limit, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        size = (path / "data.mdb").stat().st_size
        if limit != resource.RLIM_INFINITY and size >= limit - (1 << 16):
            return True
        fs = os.statvfs(path)
        return fs.f_bavail * fs.f_frsize < _LOW_SPACE
    except OSError:
        return False


def _storage_error(path: Path, exc: BaseException) -> StorageError:
    text = str(exc)
    if (
        (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT))
        or any(s in text for s in ("No space left", "File too large", "Disk quota"))
        or _looks_full(path, text)
    ):
        return StorageError(
            f"log dir {path} is full ({text}); nothing was written. Free disk space; "
            "writes resume by themselves."
        )
    return StorageError(f"log dir {path} failed: {text}; nothing was written.")


class LogDir:
    """A log store on one LMDB environment (implements ``kvlog.log.LogStore``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        max_partitions: int = DEFAULT_MAX_PARTITIONS,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
        data_file = self.path / "data.mdb"
        existing = data_file.stat().st_size if data_file.exists() else 0
        self._lock = threading.RLock()  # readers, handles, map size, a write's body
        self._write_lock = threading.RLock()  # one write transaction at a time, to its end
        self._handles: dict[bytes, Any] = {}
        # Called with the seconds each durable commit took (its fsync included), by a
        # process that measures them (workers/metrics_node.py); None: not measured.
        self.on_commit: Callable[[float], None] | None = None
        try:
            self.env = lmdb.open(
                str(self.path),
                map_size=max(map_size, existing * 2),
                max_dbs=max_partitions + 32,
                max_readers=1024,
                sync=True,
                metasync=True,
                readonly=readonly,
                subdir=True,
                create=not readonly,
            )
        except lmdb.Error as exc:
            raise _storage_error(self.path, exc) from exc
        self._psize = self.env.stat()["psize"]
        # Free reader slots of processes that died (a SIGKILLed reader pins old pages).
        self.env.reader_check()
        if not readonly:
            self.write(self._check_format)

    def _check_format(self, w: _LmdbWrite) -> None:
        stored = w.get(_META_TABLE, b"format")
        if stored is None:
            w.put(_META_TABLE, b"format", str(FORMAT_VERSION).encode())
        elif int(stored) > FORMAT_VERSION:
            raise StorageError(
                f"log dir {self.path} uses format {int(stored)}; this kvlog reads up to "
                f"{FORMAT_VERSION}. Upgrade kvlog."
            )

    def __repr__(self) -> str:
        return f"LogDir({str(self.path)!r})"

    def __enter__(self) -> LogDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._handles.clear()
            self.env.close()

    # -- transactions ----------------------------------------------------------------------

    def _begin(self, write: bool) -> lmdb.Transaction:
        try:
            return self.env.begin(write=write, buffers=True)
        except lmdb.MapResizedError:
            # Another process grew the map: adopt its size.
            self.env.set_mapsize(0)
            return self.env.begin(write=write, buffers=True)

    def _grow(self, *, force: bool) -> None:
        info = self.env.info()
        used = (info["last_pgno"] + 1) * self._psize
        if force or used > info["map_size"] * _GROW_AT:
            new_size = max(info["map_size"] * 2, used * 2)
            log.info("log dir %s: growing LMDB map to %d MiB", self.path, new_size >> 20)
            self.env.set_mapsize(new_size)

    def write(self, fn: Callable[[_LmdbWrite], T], written: Callable[[], None] | None = None) -> T:
        """Run ``fn`` in one durable write transaction; re-run after growing the map.

        ``written``, if given, is called once ``fn`` has run for good, before the commit
        (the fsync): a committer thread tells the thread waiting on it there that no more
        of the transaction's Python runs. Readers may then run during the commit (unless
        ``fn`` opened a sub-database handle: LMDB lets no other transaction open handles
        until that one ends). A commit that fails after ``written`` is not re-run."""
        if self.readonly:
            raise StorageError(f"log dir {self.path} is open read-only")
        with self._write_lock:
            self._lock.acquire()
            locked = True
            try:
                for _attempt in range(_MAX_WRITE_ATTEMPTS):
                    try:
                        self._grow(force=False)
                        txn = self._begin(write=True)
                    except lmdb.Error as exc:
                        raise _storage_error(self.path, exc) from exc
                    w = _LmdbWrite(self, txn)
                    try:
                        result = fn(w)
                        if written is not None:
                            written()
                            written = None
                            if not w._opened:
                                self._lock.release()
                                locked = False
                            try:
                                self._commit(txn)
                            except lmdb.Error as exc:
                                w.discard()
                                raise _storage_error(self.path, exc) from exc
                        else:
                            self._commit(txn)
                    except lmdb.MapFullError:
                        txn.abort()
                        w.discard()
                        self._grow(force=True)
                        continue
                    except KvlogError:
                        txn.abort()
                        w.discard()
                        raise
                    except lmdb.Error as exc:
                        txn.abort()
                        w.discard()
                        raise _storage_error(self.path, exc) from exc
                    except BaseException:
                        txn.abort()
                        w.discard()
                        raise
                    w.promote()
                    return result
                raise StorageError(f"log dir {self.path}: the map kept filling up while growing")
            finally:
                if locked:
                    self._lock.release()

    def _commit(self, txn: Any) -> None:
        if self.on_commit is None:
            txn.commit()
        else:
            started = time.perf_counter()
            txn.commit()
            self.on_commit(time.perf_counter() - started)

    @contextmanager
    def reader(self) -> Iterator[_LmdbRead]:
        """A consistent read snapshot; keep it short (long readers pin old pages)."""
        with self._lock:
            try:
                txn = self._begin(write=False)
            except lmdb.Error as exc:
                raise _storage_error(self.path, exc) from exc
            r = _LmdbRead(self, txn)
            try:
                yield r
            except lmdb.Error as exc:
                raise _storage_error(self.path, exc) from exc
            finally:
                txn.abort()

    # -- handles ---------------------------------------------------------------------------

    def _handle(self, name: bytes, txn: lmdb.Transaction, *, create: bool) -> Any | None:
        db = self._handles.get(name)
        if db is not None:
            return db
        try:
            db = self.env.open_db(name, txn=txn, create=create)
        except lmdb.NotFoundError:
            return None
        except lmdb.ReadonlyError:
            return None
        return db

    # -- conveniences over write/reader ----------------------------------------------------

    def create_partition(self, tp: TopicPartition, *, start_offset: int = 0) -> bool:
        return self.write(lambda w: w.create_partition(tp, start_offset=start_offset))

    def drop_partition(self, tp: TopicPartition) -> bool:
        return self.write(lambda w: w.drop_partition(tp))

    def has_partition(self, tp: TopicPartition) -> bool:
        with self.reader() as r:
            return r.get(_STATE_TABLE, partition_key(tp)) is not None

    def partitions(self) -> list[TopicPartition]:
        with self.reader() as r:
            # Sorted as TopicPartitions (not as key bytes, where "t/10" < "t/2"), like
            # the memory store.
            return sorted(parse_partition_key(k) for k, _ in r.items(_STATE_TABLE))

    def disk_usage(self) -> int:
        """Bytes used by the environment's pages (not the sparse map size)."""
        with self._lock:
            return (self.env.info()["last_pgno"] + 1) * self._psize


class _LmdbBase:
    def __init__(self, store: LogDir, txn: lmdb.Transaction) -> None:
        self._store = store
        self._txn = txn
        self._opened: dict[bytes, Any] = {}

    def _db(self, name: bytes, *, create: bool = False) -> Any | None:
        db = self._opened.get(name)
        if db is None:
            db = self._store._handle(name, self._txn, create=create)
            if db is not None and name not in self._store._handles:
                self._opened[name] = db
        return db

    def _partition_db(self, tp: TopicPartition) -> Any:
        db = self._db(_partition_db_name(tp))
        if db is None:
            raise UnknownTopicOrPartitionError(f"partition {tp} does not exist in this log dir")
        return db

    def offsets(self, tp: TopicPartition) -> PartitionOffsets:
        raw = self.get(_STATE_TABLE, partition_key(tp))
        if raw is None:
            raise UnknownTopicOrPartitionError(f"partition {tp} does not exist in this log dir")
        return PartitionOffsets._make(_STATE.unpack(raw))

    def get(self, table: str, key: bytes) -> bytes | None:
        db = self._db(_table_name(table))
        if db is None:
            return None
        value = self._txn.get(key, db=db)
        return None if value is None else bytes(value)

    def items(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        db = self._db(_table_name(table))
        if db is None:
            return
        cursor = self._txn.cursor(db=db)
        if not cursor.set_range(prefix):
            return
        for key, value in cursor.iternext():
            key = bytes(key)
            if not key.startswith(prefix):
                return
            yield key, bytes(value)


class _LmdbRead(_LmdbBase):
    def read(
        self,
        tp: TopicPartition,
        offset: int,
        max_bytes: int,
        *,
        max_offset: int | None = None,
    ) -> list[tuple[int, bytes]]:
        limit = read_limit(tp, self.offsets(tp), offset, max_offset)
        if offset >= limit:
            return []
        cursor = self._txn.cursor(db=self._partition_db(tp))
        if not _seek_containing(cursor, offset):
            return []
        batches = ((_KEY.unpack(key)[0], value) for key, value in cursor.iternext())
        return collect_batches(batches, offset, limit, max_bytes)

    def headers(
        self, tp: TopicPartition, start_offset: int | None = None
    ) -> Iterator[tuple[int, int, BatchHeader]]:
        cursor = self._txn.cursor(db=self._partition_db(tp))
        positioned = (
            cursor.first() if start_offset is None else _seek_containing(cursor, start_offset)
        )
        if not positioned:
            return
        for key, value in cursor.iternext():
            yield _KEY.unpack(key)[0], len(value), batch_format.read_header(value)


def _seek_containing(cursor: lmdb.Cursor, offset: int) -> bool:
    """Position on the batch containing ``offset`` (or the first after it)."""
    key = _KEY.pack(offset)
    if not cursor.set_range(key):
        return cursor.last()
    if bytes(cursor.key()) != key and not cursor.prev():
        return cursor.first()
    return True


class _LmdbWrite(_LmdbRead):
    def __init__(self, store: LogDir, txn: lmdb.Transaction) -> None:
        super().__init__(store, txn)
        # Partition states read or set in this transaction: a group commit reads each
        # touched partition's state several times (append, producer state, replies).
        self._states: dict[TopicPartition, PartitionOffsets] = {}

    def offsets(self, tp: TopicPartition) -> PartitionOffsets:
        state = self._states.get(tp)
        if state is None:
            state = self._states[tp] = super().offsets(tp)
        return state

    def promote(self) -> None:
        """After commit: handles opened in this transaction become the store's."""
        self._store._handles.update(self._opened)

    def discard(self) -> None:
        self._opened.clear()

    def put(self, table: str, key: bytes, value: bytes) -> None:
        db = self._db(_table_name(table), create=True)
        self._txn.put(key, value, db=db)

    def delete(self, table: str, key: bytes) -> bool:
        db = self._db(_table_name(table))
        return db is not None and self._txn.delete(key, db=db)

    def _set_offsets(self, tp: TopicPartition, state: PartitionOffsets) -> None:
        self.put(_STATE_TABLE, partition_key(tp), _STATE.pack(*state))
        self._states[tp] = state

    def create_partition(self, tp: TopicPartition, *, start_offset: int = 0) -> bool:
        key = partition_key(tp)
        if self.get(_STATE_TABLE, key) is not None:
            return False
        self._db(b"p/" + key, create=True)
        self._set_offsets(tp, PartitionOffsets(start_offset, start_offset, start_offset, 0))
        return True

    def drop_partition(self, tp: TopicPartition) -> bool:
        key = partition_key(tp)
        self._states.pop(tp, None)
        if not self.delete(_STATE_TABLE, key):
            return False
        name = b"p/" + key
        db = self._db(name)
        # LMDB closes the handle at once, whatever becomes of the transaction.
        self._store._handles.pop(name, None)
        self._opened.pop(name, None)
        if db is not None:
            self._txn.drop(db, delete=True)
        return True

    def append(
        self,
        tp: TopicPartition,
        batches: Sequence[Batch],
        *,
        leader_epoch: int | None = None,
        advance_high_watermark: bool = True,
        headers: Sequence[BatchHeader] | None = None,
    ) -> list[int]:
        state = self.offsets(tp)
        db = self._partition_db(tp)
        put = self._txn.put
        leo = state.log_end_offset
        size = state.size_bytes
        bases = []
        # Validate every batch before storing any: a caller that catches the error (a
        # group commit refusing one producer's batch) must not find half of them stored.
        if headers is None:
            headers = [batch_format.validate(batch) for batch in batches]
        for batch, header in zip(batches, headers, strict=True):
            value = (
                batch
                if leader_epoch is None
                else batch_format.stamp_leader_epoch(batch, leader_epoch)
            )
            if not put(_KEY.pack(leo), value, db=db, append=True):
                raise StorageError(
                    f"partition {tp}: offset {leo} exists already; log is inconsistent"
                )
            bases.append(leo)
            leo += header.last_offset_delta + 1
            size += len(value)
        hw = leo if advance_high_watermark else state.high_watermark
        self._set_offsets(tp, PartitionOffsets(state.log_start_offset, hw, leo, size))
        return bases

    def append_at(self, tp: TopicPartition, base_offset: int, batch: Batch) -> None:
        state = self.offsets(tp)
        if base_offset < state.log_end_offset:
            raise OffsetOutOfRangeError(
                f"partition {tp}: cannot append at {base_offset}, below the log end "
                f"offset {state.log_end_offset}; truncate first"
            )
        header = batch_format.validate(batch)
        self._txn.put(_KEY.pack(base_offset), batch, db=self._partition_db(tp), append=True)
        leo = base_offset + header.last_offset_delta + 1
        self._set_offsets(
            tp, state._replace(log_end_offset=leo, size_bytes=state.size_bytes + len(batch))
        )

    def set_high_watermark(self, tp: TopicPartition, offset: int) -> None:
        state = self.offsets(tp)
        if not state.log_start_offset <= offset <= state.log_end_offset:
            raise ValueError(
                f"high watermark {offset} outside {state.log_start_offset}..{state.log_end_offset}"
            )
        self._set_offsets(tp, state._replace(high_watermark=offset))

    def truncate_to(self, tp: TopicPartition, offset: int) -> PartitionOffsets:
        state = self.offsets(tp)
        if offset >= state.log_end_offset:
            return state
        cursor = self._txn.cursor(db=self._partition_db(tp))
        size = state.size_bytes
        leo = state.log_start_offset
        while cursor.last():
            base = _KEY.unpack(cursor.key())[0]
            value = cursor.value()
            end = batch_format.next_offset(base, value)
            if end <= offset:
                leo = end
                break
            size -= len(value)
            cursor.delete()
        leo = max(leo, state.log_start_offset)
        new = PartitionOffsets(state.log_start_offset, min(state.high_watermark, leo), leo, size)
        self._set_offsets(tp, new)
        return new

    def delete_before(self, tp: TopicPartition, offset: int) -> PartitionOffsets:
        state = self.offsets(tp)
        offset = min(offset, state.high_watermark)
        if offset <= state.log_start_offset:
            return state
        cursor = self._txn.cursor(db=self._partition_db(tp))
        size = state.size_bytes
        while cursor.first():
            base = _KEY.unpack(cursor.key())[0]
            value = cursor.value()
            if batch_format.next_offset(base, value) > offset:
                break
            size -= len(value)
            cursor.delete()
        new = state._replace(log_start_offset=offset, size_bytes=size)
        self._set_offsets(tp, new)
        return new

    def replace_batches(
        self, tp: TopicPartition, replacements: Sequence[BatchReplacement]
    ) -> list[bool]:
        state = self.offsets(tp)
        db = self._partition_db(tp)
        cursor = self._txn.cursor(db=db)
        last_base = _KEY.unpack(cursor.key())[0] if cursor.last() else -1
        size = state.size_bytes
        applied = []
        for base, expected, new in replacements:
            problem = replacement_error(tp, base, expected, new)
            if problem is not None:
                raise ValueError(problem)
            key = _KEY.pack(base)
            stored = self._txn.get(key, db=db)
            fits = (
                stored is not None
                and len(stored) == len(expected)
                # bytes == bytes is one memcmp; memoryview == compares item by item
                and bytes(stored) == bytes(expected)
                and batch_format.next_offset(base, stored) <= state.high_watermark
                and (new is not None or base != last_base)
            )
            if fits:
                assert stored is not None
                size -= len(stored)
                if new is None:
                    self._txn.delete(key, db=db)
                else:
                    self._txn.put(key, new, db=db)
                    size += len(new)
            applied.append(fits)
        if size != state.size_bytes:
            self._set_offsets(tp, state._replace(size_bytes=size))
        return applied

    def reset(self, tp: TopicPartition, offset: int) -> PartitionOffsets:
        self.offsets(tp)  # raises for an unknown partition
        self._txn.drop(self._partition_db(tp), delete=False)
        new = PartitionOffsets(offset, offset, offset, 0)
        self._set_offsets(tp, new)
        return new
