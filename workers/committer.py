"""The node's committer thread: every write transaction of a log dir, in turn.

LMDB write transactions are bound to the thread that began them, one at a time per
environment. The node's loop hands each one to this thread and carries on while its fsync
runs (py-lmdb releases the GIL in ``Transaction.commit``), so the loop keeps receiving
requests and answering fetches during a commit; the requests that arrive meanwhile form
the next one (pipelined group commit).

Two ways in, both from the loop's thread:

- :meth:`Committer.begin`: the group commit. Returns at once; ``fn`` runs on the
  committer thread, so it may read only what the loop does not change until the write
  has landed (``LeaderCore._write`` says what it reads). The :class:`Write` it returns is
  *landed* (durable, or failed) later: the committer then makes :meth:`fileno` readable,
  and :meth:`take_landed` hands it back. Nothing may be acknowledged before that.
- :meth:`Committer.write`: any other write (assignment, follower appends, high watermark
  flushes, DeleteRecords, producer expiry, the health probe). Returns once durable;
  raises what the store raises. It waits behind a write in flight, so its caller lands
  that one first (the shell does, see ``workers/node_shell.py``).

The store's own lock keeps the loop's read transactions out while a write's body runs
(and the map may grow) and lets them in during its fsync (``LogDir.write``'s
``written``). Only this thread begins write transactions of the process, so none blocks
on LMDB's writer lock behind another thread of the process. The node sets a short GIL
switch interval: a commit that returns from its fsync while the loop runs Python gets
the GIL back within it, not after CPython's default 5 ms.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class WritableStore(Protocol):
    """What the committer needs of a store (``kvlog.lmdb_store.LogDir``)."""

    def write(self, fn: Callable[[Any], Any], written: Callable[[], None] | None = None) -> Any: ...


class Write:
    """One write transaction handed to the committer. Its fields are set by the
    committer thread before ``done`` is set, and read by the loop after."""

    __slots__ = ("done", "error", "fn", "pipelined", "ran", "serial", "value")

    def __init__(self, fn: Callable[[Any], Any], *, pipelined: bool, serial: int) -> None:
        self.fn = fn
        self.ran = threading.Event()  # fn has run (or failed): the loop may go on
        self.done = threading.Event()  # durable, or failed
        self.value: Any = None
        self.error: BaseException | None = None
        self.pipelined = pipelined
        self.serial = serial

    def result(self) -> Any:
        """The value ``fn`` returned, once durable; raises what the write raised."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value


class Committer:
    """Owns the write transactions of one store: a daemon thread running them in the
    order they were handed in. ``begin``, ``write``, ``take_landed`` and ``close`` are
    for one thread (the node's loop); the rest runs on the committer's own thread."""

    def __init__(self, store: WritableStore, name: str = "committer") -> None:
        self.store = store
        self._jobs: queue.SimpleQueue[Write | None] = queue.SimpleQueue()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self._serial = 0
        self.in_flight: Write | None = None  # the pipelined write not landed yet
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def fileno(self) -> int:
        """Readable when a pipelined write has landed (for the loop's poller)."""
        return self._read_fd

    def begin(self, fn: Callable[[Any], Any]) -> Write:
        """Start the group commit ``fn`` on the committer thread.

        One pipelined write at a time: the next begins after this one is taken back
        from :meth:`take_landed` (its outcome decides what the next may do: duplicate
        checks, offsets)."""
        if self.in_flight is not None:
            raise RuntimeError("a group commit is in flight: land it first")
        job = self._submit(fn, pipelined=True)
        self.in_flight = job
        return job

    def write(self, fn: Callable[[Any], Any]) -> Any:
        """One durable write outside the group commit; its result, or raises."""
        if self.in_flight is not None:
            raise RuntimeError("a write while a group commit is in flight: land it first")
        return self._submit(fn, pipelined=False).result()

    def take_landed(self, *, wait: bool = False) -> Write | None:
        """The pipelined write in flight, once landed (``wait``: block until it is)."""
        job = self.in_flight
        if job is None:
            return None
        if wait:
            job.done.wait()
        if not job.done.is_set():
            return None
        with contextlib.suppress(BlockingIOError):
            os.read(self._read_fd, 4096)
        self.in_flight = None
        return job

    def close(self) -> None:
        """Land what is in flight and stop the thread."""
        self.take_landed(wait=True)
        self._jobs.put(None)
        self._thread.join(timeout=30)
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the committer's thread ------------------------------------------------------------

    def _submit(self, fn: Callable[[Any], Any], *, pipelined: bool) -> Write:
        self._serial += 1
        job = Write(fn, pipelined=pipelined, serial=self._serial)
        self._jobs.put(job)
        return job

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if job.pipelined:
                    job.value = self.store.write(job.fn, job.ran.set)
                else:
                    job.value = self.store.write(job.fn)
            except BaseException as exc:  # handed to the loop, which decides
                job.error = exc
            job.ran.set()
            job.done.set()
            if job.pipelined:
                with contextlib.suppress(OSError):
                    os.write(self._write_fd, b"\0")


class CommittedStore:
    """A store whose writes run on a :class:`Committer` (what the node's cores are given).
    Reads go straight to the store. Same thread rules as the committer."""

    def __init__(self, store: Any, committer: Committer) -> None:
        self._store = store
        self.committer = committer

    def write(self, fn: Callable[[Any], Any]) -> Any:
        return self.committer.write(fn)

    def create_partition(self, tp: Any, *, start_offset: int = 0) -> bool:
        return bool(self.write(lambda w: w.create_partition(tp, start_offset=start_offset)))

    def drop_partition(self, tp: Any) -> bool:
        return bool(self.write(lambda w: w.drop_partition(tp)))

    @contextmanager
    def reader(self) -> Iterator[Any]:
        with self._store.reader() as r:
            yield r

    def __getattr__(self, name: str) -> Any:  # partitions, has_partition, path, close, ...
        return getattr(self._store, name)


__all__ = ["CommittedStore", "Committer", "Write"]
