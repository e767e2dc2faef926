"""A mirror's files in its state dir: the lock (one mirror per state dir), the saved
state (offset maps, how far each target partition was known, a clean-stop flag) and the
status ``kvlog mirror status`` reads. Every file is replaced atomically (write, fsync,
rename, fsync the dir), so a crash leaves the old or the new one, never half of one.

The state is an aid, not the truth: where a mirror stopped is read back from the
target's tail at every start (workers/mirror_core.py); the state bounds that read and
keeps the offset maps that translate group offsets.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kvlog.errors import InvalidConfigError
from kvlog.types import TopicPartition

from .mirror_model import tp_key

STATE_FILE = "state.json"
STATUS_FILE = "status.json"
LOCK_FILE = "lock"
STATE_VERSION = 1


class StateDir:
    """One mirror's state dir, locked while the mirror runs. Owned by the mirror's
    process; not thread-safe."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock: Any = None

    def lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path / LOCK_FILE, "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.seek(0)
            owner = self._lock.read().strip() or "another process"
            self._lock.close()
            self._lock = None
            raise InvalidConfigError(
                f"mirror state dir {self.path} is in use by pid {owner}: one mirror per state "
                "dir (each target partition has one writer)"
            ) from None
        self._lock.truncate(0)
        self._lock.write(str(os.getpid()))
        self._lock.flush()

    def unlock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _write(self, name: str, data: dict[str, Any], *, durable: bool) -> None:
        target = self.path / name
        tmp = target.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
        if durable:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def load_state(self) -> dict[str, Any]:
        try:
            data = json.loads((self.path / STATE_FILE).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise InvalidConfigError(
                f"{self.path / STATE_FILE} cannot be read ({exc}); move it away to let the "
                "mirror rebuild it from the target"
            ) from None
        if data.get("version") != STATE_VERSION:
            raise InvalidConfigError(
                f"{self.path / STATE_FILE} has state version {data.get('version')}, this "
                f"kvlog writes {STATE_VERSION}"
            )
        return dict(data)

    def save_state(self, data: dict[str, Any]) -> None:
        self._write(STATE_FILE, {"version": STATE_VERSION, **data}, durable=True)

    def write_status(self, data: dict[str, Any]) -> None:
        self._write(STATUS_FILE, data, durable=False)


def read_status(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A state dir's last status (None when no mirror ever wrote one)."""
    try:
        data = json.loads((Path(path) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def waiting_status(
    name: str,
    known: list[TopicPartition],
    holds: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
    stamps: Mapping[TopicPartition, int],
    now: int,
    since: int,
    forwarded: int,
) -> dict[str, Any]:
    """The status of a mirror waiting for its target: per source partition, the lag from
    its committed progress (``holds``) to the source's end and the age of the first record
    not forwarded (``stamps``: its timestamp)."""
    feeds = []
    for tp in known:
        done, end = holds.get(tp, 0), ends.get(tp)
        stamp = stamps.get(tp)
        feeds.append(
            {
                "source": tp_key(tp),
                "target": None,
                "forwarded_to": done,
                "source_end": end,
                "lag_records": None if end is None else max(0, end - done),
                "oldest_unforwarded_ms": stamp,
                "age_ms": None if stamp is None else max(0, now - stamp),
                "gaps": 0,
            }
        )
    return {
        "name": name,
        "running": False,
        "target_reachable": False,
        "unreachable_since_ms": since,
        "forwarded": forwarded,
        "lag_records": sum(f["lag_records"] or 0 for f in feeds),
        "max_age_ms": max((f["age_ms"] or 0 for f in feeds), default=0),
        "gaps": 0,
        "error": None,
        "feeds": feeds,
    }
