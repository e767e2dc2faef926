"""A consistent copy of a (possibly live) data dir: ``kvlog backup``.

:func:`backup` copies every LMDB environment of a data dir with LMDB's copy with
compaction (``mdb_env_copy2`` with ``MDB_CP_COMPACT``): each copy is a consistent
snapshot that a reader takes without stopping the writer. The copy is laid out as a data
dir (log dirs under ``logs/<node id>``, each with its ``node.id``), stamped with the
format version and described by ``BACKUP.json``; a broker starts on it as it is. The
metadata environment is copied first, then the log dirs: every record acknowledged before
the backup began is in the copy, and the copy's committed offsets are never ahead of its
logs. docs/OPERATIONS.md has the procedure; tests/broker/test_backup_restore.py runs it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb

from ._version import __version__
from .data_format import FORMAT_VERSION, check_data_dir, write_format
from .errors import InvalidConfigError
from .lmdb_store import LogDir

MANIFEST_FILE = "BACKUP.json"
META_DIR = "meta"
LOGS_DIR = "logs"
NODE_ID_FILE = "node.id"


# -- backup ------------------------------------------------------------------------------------


@dataclass
class CopiedEnv:
    """One LMDB environment of a backup: where from, where to, and its size."""

    source: str
    target: str
    node_id: int | None
    bytes: int


@dataclass
class BackupReport:
    """What :func:`backup` copied (also written to the copy's BACKUP.json)."""

    source: str
    target: str
    started_at: float
    seconds: float = 0.0
    envs: list[CopiedEnv] = field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "written_by": f"kvlog {__version__}",
            "source": self.source,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            "seconds": round(self.seconds, 3),
            "environments": [vars(env) for env in self.envs],
        }

    def restore_command(self) -> str:
        """The ``kvlog serve`` line that starts a broker on the copy."""
        logs = [env for env in self.envs if env.node_id is not None]
        default = [f"{self.target}/{LOGS_DIR}/0"]
        flags = ""
        if [env.target for env in logs] != default:
            flags = "".join(f" --log-dir {env.target}" for env in logs)
        return f"kvlog serve --data-dir {self.target}{flags}"


def log_dirs_of(data_dir: Path) -> list[Path]:
    """The log dirs of a data dir: those its running broker names (run/processes.json),
    else ``logs/*`` inside it."""
    try:  # the supervisor's run file (workers/data_dir.py writes it)
        status = json.loads((data_dir / "run" / "processes.json").read_text())
        named = [p.get("log_dir") for p in status.get("processes", []) if p.get("role") == "node"]
        if named and all(named):
            return [Path(p) for p in named]
    except (OSError, ValueError, AttributeError):
        pass
    logs = data_dir / LOGS_DIR
    found = [d for d in logs.iterdir() if (d / "data.mdb").is_file()] if logs.is_dir() else []
    return sorted(found, key=lambda d: d.name)


def _node_id(log_dir: Path) -> int:
    try:
        return int((log_dir / NODE_ID_FILE).read_text().strip())
    except (OSError, ValueError):
        raise InvalidConfigError(
            f"{log_dir} has no readable {NODE_ID_FILE}: is it a kvlog log dir?"
        ) from None


def _copy_env(source: Path, target: Path) -> int:
    """LMDB's compacting copy of the environment at ``source`` into the new directory
    ``target``; its size in bytes. Runs beside a live writer (a read transaction)."""
    if not (source / "data.mdb").is_file():
        raise InvalidConfigError(f"{source} holds no LMDB environment (no data.mdb)")
    target.mkdir(parents=True)
    store = LogDir(source, readonly=True)
    try:
        for _attempt in range(5):
            try:
                store.env.copy(str(target), compact=True)
                break
            except lmdb.MapResizedError:
                store.env.set_mapsize(0)  # the writer grew the map: adopt its size, again
        else:
            raise InvalidConfigError(f"{source}: the map kept growing during the copy")
    finally:
        store.close()
    return (target / "data.mdb").stat().st_size


def backup(
    data_dir: Path,
    target: Path,
    log_dirs: Sequence[Path] | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> BackupReport:
    """Copy a (possibly live) data dir to ``target``, a new directory, as a data dir a
    broker can start on: the metadata environment first, then each log dir (see the
    module docstring)."""
    data_dir, target = Path(data_dir).resolve(), Path(target).resolve()
    if not (data_dir / META_DIR / "data.mdb").is_file():
        raise InvalidConfigError(f"{data_dir} is not a kvlog data dir (no {META_DIR}/data.mdb)")
    if target.exists() and any(target.iterdir()):
        raise InvalidConfigError(f"{target} exists and is not empty; back up into a new dir")
    if target == data_dir or data_dir in target.parents:
        raise InvalidConfigError(f"{target} is inside the data dir {data_dir}; choose another")
    dirs = [Path(d).resolve() for d in (log_dirs or log_dirs_of(data_dir))]
    if not dirs:
        raise InvalidConfigError(f"{data_dir} has no log dirs; name them with --log-dir")
    check_data_dir(data_dir, dirs)  # a newer format is not ours to copy
    report = BackupReport(str(data_dir), str(target), time.time())
    started = time.monotonic()
    target.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _line: None)
    meta = _copy_env(data_dir / META_DIR, target / META_DIR)
    report.envs.append(CopiedEnv(str(data_dir / META_DIR), str(target / META_DIR), None, meta))
    say(f"copied {data_dir / META_DIR} ({meta:,} bytes)")
    for log_dir in dirs:
        node_id = _node_id(log_dir)
        copy = target / LOGS_DIR / str(node_id)
        size = _copy_env(log_dir, copy)
        (copy / NODE_ID_FILE).write_text(f"{node_id}\n")
        write_format(copy)
        report.envs.append(CopiedEnv(str(log_dir), str(copy), node_id, size))
        say(f"copied {log_dir} (node {node_id}, {size:,} bytes)")
    write_format(target)
    report.seconds = time.monotonic() - started
    tmp = target / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(report.manifest(), indent=2) + "\n")
    os.replace(tmp, target / MANIFEST_FILE)
    return report
