"""The on-disk format version of a data dir and its log dirs.

Every data dir and log dir carries ``kvlog-format.json`` (``{"format": 1, "written_by":
"kvlog 0.1.0"}``). :data:`FORMAT_VERSION` names the on-disk format this kvlog reads and
writes: the data dir's layout (``meta/``, ``logs/<n>/`` with ``node.id``, ``run/``) and
what its LMDB environments hold (each environment also keeps its
own format, checked when a node opens it).

:func:`check_data_dir` runs before any process starts: a dir written by a newer kvlog is
refused with a clear error instead of being misread. Once the broker runs,
:func:`stamp_data_dir` stamps a dir without a version (new, or from a kvlog before
versions were kept) with this one. A kvlog that changes the format will convert older
dirs forward and bump the number, so a downgrade is refused, not silently wrong.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__
from .errors import InvalidConfigError

FORMAT_VERSION = 1
FORMAT_FILE = "kvlog-format.json"


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
