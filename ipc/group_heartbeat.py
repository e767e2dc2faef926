"""A group member's heartbeat thread.

The thread keeps the member's session alive while the application processes records
between polls. Its heartbeats are long polls (``max_wait_ms`` = ``heartbeat.interval.ms``,
at most half the session): the coordinator holds each until the wait ends, then the thread
sends the next at once, or answers it REBALANCE_IN_PROGRESS the moment a rebalance starts,
so a member hears of a rebalance within milliseconds, not at its next heartbeat. A
heartbeat that gets no answer (the coordinator restarting) is retried after
``retry.backoff.ms``, doubling up to the interval. Before each heartbeat the member checks
``max.poll.interval.ms`` (a consumer that stopped polling leaves its group).

The thread only reads the membership and hands errors back to it
(:class:`HeartbeatOwner`); what an error means for the group is the member's business.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from kvlog.errors import KafkaTimeoutError, KvlogError

from .rpc import IOThread


class HeartbeatOwner(Protocol):
    """What the heartbeat thread needs from its group member (ipc/group_member.py)."""

    group_id: str
    instance_id: str | None
    # Bumped by every JoinGroup and LeaveGroup the member sends: a heartbeat answered
    # after one speaks of a membership that is gone, and is ignored.
    membership_epoch: int

    def heartbeat_target(self) -> tuple[str, int] | None:
        """(member id, generation) to heartbeat for, or None when there is none."""
        ...

    def leave_if_poll_overdue(self) -> bool:
        """Leave the group when poll() has not been called within max.poll.interval.ms;
        True when it left."""
        ...

    def coordinator(self) -> str:
        """The group coordinator's endpoint (raises when none is known)."""
        ...

    def on_heartbeat_error(self, exc: KvlogError) -> bool:
        """Act on a failed heartbeat; True when the coordinator gave no answer (retry)."""
        ...


class HeartbeatThread:
    """Owned by one GroupMember, which starts it on subscribe and stops it on close.
    ``kick`` and ``stop`` may be called from any thread."""

    def __init__(
        self,
        owner: HeartbeatOwner,
        io: IOThread,
        *,
        interval_ms: int,
        session_timeout_ms: int,
        backoff_s: float,
    ) -> None:
        self.owner = owner
        self.io = io
        self.interval_ms = interval_ms
        self.interval_s = interval_ms / 1000
        self.session_timeout_ms = session_timeout_ms
        self.backoff_s = backoff_s
        self._stop = threading.Event()
        # The thread waits on this for its interval, its heartbeat's reply, a new
        # generation to heartbeat for (kick: so it hears of the next rebalance at once)
        # and stop() (so a parked heartbeat never delays it).
        self._cond = threading.Condition()
        self._kicked = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name=f"kvlog-heartbeat-{self.owner.group_id}", daemon=True
            )
            self._thread.start()

    def kick(self) -> None:
        """A new generation to heartbeat for: heartbeat for it now, not after a sleep."""
        with self._cond:
            self._kicked = True
            self._cond.notify_all()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:  # the thread must not wait out a parked heartbeat
            self._cond.notify_all()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 1)

    def _loop(self) -> None:
        owner = self.owner
        delay = self.interval_s
        failures = 0  # heartbeats in a row the coordinator did not answer
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop.is_set() or self._kicked, delay)
                # Taken before the state is read: a kick after this read is not lost.
                self._kicked = False
            if self._stop.is_set():
                return
            delay = self.interval_s
            # Read before the target: a JoinGroup sent after this read makes the answer
            # (maybe REBALANCE_IN_PROGRESS, for the rebalance that join started) moot.
            epoch = owner.membership_epoch
            target = owner.heartbeat_target()
            if target is None:
                continue
            if owner.leave_if_poll_overdue():
                continue
            sent = time.monotonic()
            error = self._heartbeat(*target)
            if self._stop.is_set():
                return
            if epoch != owner.membership_epoch:
                continue  # a JoinGroup or LeaveGroup since: its own reply tells what's what
            if error is None:
                # The coordinator held it for up to the interval: send the next at once. A
                # server that answers at once (older than long polls, or with too many
                # parked) gets one per interval, as before.
                failures = 0
                delay = max(0.0, self.interval_s - (time.monotonic() - sent))
                continue
            if owner.on_heartbeat_error(error):
                # No answer (the coordinator restarts: the connection dropped, or the
                # request timed out): try again soon, backing off up to the interval, so
                # the session outlives a restart and a rebalance is heard of early.
                failures += 1
                delay = min(self.interval_s, self.backoff_s * 2 ** min(failures - 1, 16))
            else:
                failures = 0

    def _heartbeat(self, member_id: str, generation: int) -> KvlogError | None:
        """One heartbeat, long-polled for up to heartbeat.interval.ms; its error or None.
        Returns early (None) when stop() is called."""
        try:
            endpoint = self.owner.coordinator()
        except KvlogError as exc:
            return exc
        box: list[KvlogError | None] = []

        def callback(
            header: dict[str, Any] | None, frames: list[bytes], error: KvlogError | None
        ) -> None:
            if error is None and header is None:
                error = KafkaTimeoutError("no reply from the group coordinator")
            with self._cond:
                box.append(error)
                self._cond.notify_all()

        # The coordinator answers within max_wait_ms (it caps the wait at half the
        # session, and so does this); the request times out a grace period later. Wait
        # plus grace stay within three quarters of the session, so after a lost answer
        # the retry still arrives within the session the heartbeat began.
        wait_ms = min(self.interval_ms, self.session_timeout_ms // 2)
        timeout_ms = wait_ms + max(1000, self.session_timeout_ms // 4)
        self.io.submit(
            endpoint,
            "heartbeat",
            {
                "group_id": self.owner.group_id,
                "generation": generation,
                "member_id": member_id,
                "group_instance_id": self.owner.instance_id,
                "max_wait_ms": wait_ms,
            },
            callback,
            timeout_ms=timeout_ms,
        )
        # The I/O thread fails the request at its timeout; the extra seconds only guard
        # against a stuck I/O thread.
        with self._cond:
            if not self._cond.wait_for(
                lambda: bool(box) or self._stop.is_set(), timeout_ms / 1000 + 5.0
            ):
                return KafkaTimeoutError("no reply from the group coordinator")
        return box[0] if box else None
