"""A data dir as a whole: its layout, its format version, and a consistent copy of it.

Layout (``workers/supervisor.py`` creates it)::

    <data_dir>/kvlog-format.json   {"format": 1, "written_by": "kvlog 0.1.0"}
    <data_dir>/meta/               the coordinator's LMDB environment (topics, groups, offsets)
    <data_dir>/logs/<n>/           node n's log dir when no --log-dir is given
    <log_dir>/node.id              the node id a log dir keeps, wherever it is
    <log_dir>/kvlog-format.json    (also in log dirs kept outside the data dir)
    <data_dir>/run/                processes.json, supervisor.lock (only while it runs)

**Format version.** :data:`FORMAT_VERSION` names the on-disk format this kvlog reads and
writes: the layout above and what its LMDB environments hold (each environment also keeps
its own format, checked when a node opens it). :func:`check_data_dir` runs before any
process starts: a dir written by a newer kvlog is refused with a clear error instead of
being misread. Once the broker runs, :func:`stamp_data_dir` stamps a dir without a
version (new, or from a kvlog before versions were kept) with this one. A kvlog that
changes the format will convert older dirs forward and bump the number, so a downgrade is
refused, not silently wrong.

**Backup.** :func:`backup` copies a data dir while its broker runs: LMDB's copy with
compaction (``mdb_env_copy2`` with ``MDB_CP_COMPACT``) of every environment, each a
consistent snapshot that readers take without stopping the writer, into a new directory
laid out as a data dir (log dirs under ``logs/<node id>``), which a broker starts on as
it is. The metadata environment is copied first, then the log dirs: every record
acknowledged before the backup began is in the copy, and the copy's committed offsets
are never ahead of its logs. ``kvlog backup`` is the command; docs/OPERATIONS.md has the
procedure.
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
from .errors import InvalidConfigError
from .lmdb_store import LogDir

FORMAT_VERSION = 1
FORMAT_FILE = "kvlog-format.json"
MANIFEST_FILE = "BACKUP.json"
META_DIR = "meta"
LOGS_DIR = "logs"
NODE_ID_FILE = "node.id"


class NewerFormatError(InvalidConfigError):
    """A data dir or log dir was written by a newer kvlog than this one."""


def read_format(path: Path) -> int | None:
    """The format version a dir was stamped with, or None when it has none."""
    try:
        stamp = json.loads((path / FORMAT_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InvalidConfigError(f"{path / FORMAT_FILE} cannot be read: {exc}") from None
    version = stamp.get("format") if isinstance(stamp, dict) else None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidConfigError(f"{path / FORMAT_FILE} holds no format version: {stamp!r}")
    return version


def write_format(path: Path, version: int = FORMAT_VERSION) -> None:
    """Stamp ``path`` (atomically: a crash leaves the old stamp or the new one)."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (FORMAT_FILE + ".tmp")
    tmp.write_text(json.dumps({"format": version, "written_by": f"kvlog {__version__}"}) + "\n")
    tmp.replace(path / FORMAT_FILE)


def check_format(path: Path) -> None:
    """Refuse a dir written by a newer kvlog (a dir without a version passes)."""
    version = read_format(path)
    if version is not None and version > FORMAT_VERSION:
        raise NewerFormatError(
            f"{path} was written by a newer kvlog (on-disk format {version}; this kvlog "
            f"{__version__} reads format {FORMAT_VERSION}). Run the kvlog that wrote it, or "
            "restore a backup taken before the upgrade; nothing was changed."
        )


def check_data_dir(data_dir: Path, log_dirs: Sequence[Path]) -> None:
    """Refuse a data dir or log dir written by a newer kvlog, before a broker starts."""
    for path in [data_dir, *log_dirs]:
        check_format(Path(path))


def stamp_data_dir(data_dir: Path, log_dirs: Sequence[Path]) -> None:
    """Stamp the dirs a broker runs on that have no version yet with this one."""
    for path in [data_dir, *log_dirs]:
        if read_format(Path(path)) is None:
            write_format(Path(path))


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
    try:
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
