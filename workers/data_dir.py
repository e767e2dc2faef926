"""What a data dir holds for the supervisor: each log dir's node id, the internal
endpoints of its processes, the run file ``kvlog status`` reads, and which directories a
start creates (so a failed start can remove them again).

Layout::

    <data_dir>/meta/       the coordinator's LMDB environment (topics, groups, offsets)
    <data_dir>/logs/0/     node 0's log dir when no log dirs are given (each log dir has
                           its node id in ``node.id``)
    <data_dir>/run/        processes.json (for ``kvlog status``), supervisor.lock, and the
                           processes' ipc:// sockets when the broker listens on ipc://

Plain functions; the supervisor that holds the data dir's lock is the only writer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kvlog.errors import InvalidConfigError

STATUS_FILE = "processes.json"


def node_id_for(log_dir: Path, taken: set[int]) -> int:
    """A log dir keeps its node id in ``node.id`` so reordering --log-dir is harmless."""
    id_file = log_dir / "node.id"
    if id_file.exists():
        node_id = int(id_file.read_text().strip())
        if node_id in taken:
            raise InvalidConfigError(
                f"log dir {log_dir} has node id {node_id}, which another log dir also has; "
                "each log dir must be a separate directory"
            )
        return node_id
    node_id = next(i for i in range(len(taken) + 1) if i not in taken)
    log_dir.mkdir(parents=True, exist_ok=True)
    id_file.write_text(f"{node_id}\n")
    return node_id


def internal_endpoint(listen: str, run_dir: Path, name: str) -> str:
    """Where a coordinator or node binds: the listen host on a free port (kept across
    restarts once bound), or a socket in the run dir."""
    if listen.startswith("tcp://"):
        host = listen[len("tcp://") :].rsplit(":", 1)[0]
        return f"tcp://{host}:0"
    if listen.startswith("ipc://"):
        return f"ipc://{run_dir / (name + '.sock')}"
    raise InvalidConfigError(f"listen address {listen!r} must be tcp:// or ipc://")


def missing_roots(paths: list[Path]) -> list[Path]:
    """The outermost directories a start would create for ``paths`` (none that exist)."""
    roots: set[Path] = set()
    for path in paths:
        if path.exists():
            continue
        while not path.parent.exists():
            path = path.parent
        roots.add(path)
    return sorted(roots)


def write_status(run_dir: Path, status: dict[str, Any]) -> None:
    """Replace the run file atomically (a reader never sees half of it)."""
    path = run_dir / STATUS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=2))
    tmp.replace(path)


def read_status(data_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The live processes of a data dir, from its status file (for ``kvlog status``)."""
    path = Path(data_dir) / "run" / STATUS_FILE
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    alive = []
    for entry in data.get("processes", []):
        try:
            os.kill(int(entry["pid"]), 0)
        except (ProcessLookupError, PermissionError, ValueError):
            continue
        alive.append(entry)
    return alive
