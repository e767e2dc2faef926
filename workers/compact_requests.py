"""How ``kvlog topics compact TOPIC`` reaches the sweeper: request files in the run dir.

The sweeper has no socket, and a forced compaction is rare, so the request is a file::

    <data_dir>/run/compact/<id>.request   {"topic": ..., "requested_ms": ...}
    <data_dir>/run/compact/<id>.done      {"topic": ..., "partitions": [...], "error": ...}

The CLI writes the request atomically (temporary name, then rename); the sweeper looks
at the directory every 100 ms of its loop, runs a forced pass over every partition of the
topic in every log dir, then replaces the request by its ``.done`` answer, which the CLI
reads and deletes. A request left by a CLI that gave up is still run; answers nobody read
are deleted after an hour. Plain functions; no process holds a lock on these files.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

REQUEST_DIR = "compact"
STALE_AFTER_S = 3600.0


def request_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "run" / REQUEST_DIR


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def submit(data_dir: str | os.PathLike[str], topic: str, now_ms: int) -> str:
    """Ask the sweeper for a forced compaction of ``topic``; returns the request's id."""
    folder = request_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    request_id = uuid.uuid4().hex
    _write_atomically(folder / f"{request_id}.request", {"topic": topic, "requested_ms": now_ms})
    return request_id


def pending(data_dir: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``(id, topic)`` of every request waiting, oldest first."""
    folder = request_dir(data_dir)
    try:
        entries = sorted(
            (e for e in os.scandir(folder) if e.name.endswith(".request")),
            key=lambda e: e.stat().st_mtime,
        )
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        try:
            topic = json.loads(Path(entry.path).read_text())["topic"]
        except (OSError, ValueError, KeyError, TypeError):
            topic = None
        out.append((entry.name[: -len(".request")], topic if isinstance(topic, str) else ""))
    return out


def complete(data_dir: str | os.PathLike[str], request_id: str, answer: dict[str, Any]) -> None:
    """The sweeper's answer: written first, then the request goes."""
    folder = request_dir(data_dir)
    _write_atomically(folder / f"{request_id}.done", answer)
    (folder / f"{request_id}.request").unlink(missing_ok=True)


def wait(
    data_dir: str | os.PathLike[str], request_id: str, timeout_s: float
) -> dict[str, Any] | None:
    """The answer to a request (deleted once read), or None after ``timeout_s``."""
    path = request_dir(data_dir) / f"{request_id}.done"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            answer = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
            continue
        path.unlink(missing_ok=True)
        return answer if isinstance(answer, dict) else {"error": "unreadable answer"}


def forget_old(data_dir: str | os.PathLike[str], now_s: float) -> None:
    """Delete answers nobody read within an hour."""
    folder = request_dir(data_dir)
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        try:
            if entry.name.endswith(".done") and now_s - entry.stat().st_mtime > STALE_AFTER_S:
                os.unlink(entry.path)
        except OSError:
            continue
