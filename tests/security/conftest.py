"""Fixtures for the security tests: a key ring and a CURVE-secured broker per module.

``ring`` holds the server key and principals ``admin`` (a super user), ``alice``, ``bob``
and ``carol`` (authorized, no ACLs) and ``mallory`` (a key the broker does not know).
``secured`` is one broker per module: tests sharing it use their own topic names and
must not change the authorized directory; tests that do start their own.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from sectest_util import (  # noqa: E402
    KeyRing,
    SecuredBroker,
    start_secured_broker,
    stop_and_check,
)

PRINCIPALS = ("admin", "alice", "bob", "carol")


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    keys = KeyRing(tmp_path_factory.mktemp("keys"))
    for name in PRINCIPALS:
        keys.create(name)
    keys.create("mallory", authorize=False)
    return keys


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, ring: KeyRing) -> Iterator[SecuredBroker]:
    b = start_secured_broker(tmp_path_factory.mktemp("secured"), ring)
    try:
        yield b
    finally:
        stop_and_check(b)
