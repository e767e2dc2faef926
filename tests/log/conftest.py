"""Fixtures for the log-layer tests: every contract test runs on both stores."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The helpers module sits beside this file; make it importable whatever the import mode.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from logtest_util import StoreKind  # noqa: E402


@pytest.fixture(params=["lmdb", "memory"])
def store_kind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreKind]:
    """Opens (and reopens) one store of each kind; closes whatever is open at the end."""
    kind = StoreKind(request.param, tmp_path / "logdir")
    try:
        yield kind
    finally:
        kind.close()


@pytest.fixture
def store(store_kind: StoreKind):  # -> LogStore
    return store_kind.open()
