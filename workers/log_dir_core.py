"""A failing log dir, without sockets: when the node goes offline and when it comes back.

A write that fails with a storage error (disk full, I/O error, file-size limit) takes the
node's log dir *offline*: the node tells the coordinator at once (a new heartbeat with
``offline``), which moves its leaderships away, and it stops fetching as a follower. It
then *probes* the log dir: when the disk has room again (the shell measures it and passes
it in; a small write can succeed on LMDB's free pages while the disk is still full) and a
probe write through the store succeeds, it comes back *online*, as a follower that
catches up.

States and moves (``failed`` is set by whichever core saw the failing write)::

    online --write failed--> online+failed --on_failure--> offline
    offline --probe due, room >= PROBE_HEADROOM, probe write ok--> online
    offline --probe due, too little room or probe write failed--> offline (next probe later)

Probes run every second; a log dir that fails again within 30 s of recovering is probed
half as often each time (up to every 30 s), so a flapping disk does not flap the cluster.

Time is passed in (``now_ms``); owned by one node's loop; not thread-safe.
"""

from __future__ import annotations

import logging

from kvlog.errors import KvlogError
from kvlog.log import LogStore

log = logging.getLogger(__name__)

PROBE_HEADROOM = 1 << 20  # room a failed log dir needs before it is tried again
FIRST_PROBE_INTERVAL_MS = 1000
MAX_PROBE_INTERVAL_MS = 30_000
FLAPPING_WINDOW_MS = 30_000  # failing again this soon after recovering backs probes off


class LogDirHealth:
    """Owned by one node's loop, shared by its leader and follower cores; not thread-safe."""

    def __init__(self, name: str, log_dir: str) -> None:
        self.name = name
        self.log_dir = log_dir
        self.failed = False  # a write failed; the node has not recovered yet
        self.offline = False
        self.next_probe_ms = 0
        self.probe_interval_ms = FIRST_PROBE_INTERVAL_MS
        self.online_since_ms: int | None = None

    def write_failed(self) -> None:
        """A write through the store failed with a storage error."""
        self.failed = True

    @property
    def writable(self) -> bool:
        return not (self.failed or self.offline)

    def on_failure(self, now_ms: int) -> bool:
        """Go offline after a failed write; returns whether the node just went offline."""
        if not self.failed or self.offline:
            return False
        self.offline = True
        recent = (
            self.online_since_ms is not None and now_ms - self.online_since_ms < FLAPPING_WINDOW_MS
        )
        self.probe_interval_ms = (
            min(self.probe_interval_ms * 2, MAX_PROBE_INTERVAL_MS)
            if recent
            else FIRST_PROBE_INTERVAL_MS
        )
        self.next_probe_ms = now_ms + self.probe_interval_ms
        log.error(
            "%s: log dir %s failed; going offline until writes work again",
            self.name,
            self.log_dir,
        )
        return True

    def probe(self, now_ms: int, headroom_bytes: int, store: LogStore) -> bool:
        """If a probe is due, try the log dir; returns whether the node came back online."""
        if not self.offline or now_ms < self.next_probe_ms:
            return False
        self.next_probe_ms = now_ms + self.probe_interval_ms
        if headroom_bytes < PROBE_HEADROOM:
            log.info("%s: log dir still full (%d bytes of room)", self.name, headroom_bytes)
            return False
        try:
            store.write(lambda w: w.put("meta", b"probe", str(now_ms).encode()))
        except KvlogError as exc:
            log.info("%s: log dir still failing: %s", self.name, exc.message)
            return False
        log.warning("%s: log dir %s writes again; coming back online", self.name, self.log_dir)
        self.offline = False
        self.failed = False
        self.online_since_ms = now_ms
        return True

    def next_deadline_ms(self) -> int | None:
        return self.next_probe_ms if self.offline else None


__all__ = ["PROBE_HEADROOM", "LogDirHealth"]
