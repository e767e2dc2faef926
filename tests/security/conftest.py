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

from kafka_sasl_util import PASSWORDS  # noqa: E402
from sectest_util import (  # noqa: E402
    KeyRing,
    SecuredBroker,
    start_secured_broker,
    stop_and_check,
    wait_until,
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


@pytest.fixture(scope="module")
def sasl(tmp_path_factory: pytest.TempPathFactory, ring: KeyRing) -> Iterator[SecuredBroker]:
    """A broker whose Kafka listeners take SCRAM-SHA-256/512 logins (SASL_PLAINTEXT), with
    SCRAM users admin (a super user), alice and bob (passwords: kafka_sasl_util.PASSWORDS),
    added through kvlog's admin op as ``kvlog users add`` does."""
    b = start_secured_broker(
        tmp_path_factory.mktemp("sasl"),
        ring,
        kafka_listen="127.0.0.1:0",
        kafka_sasl_mechanisms=["SCRAM-SHA-256", "SCRAM-SHA-512"],
    )
    try:
        with b.admin() as admin:
            for user, password in PASSWORDS.items():
                admin.upsert_scram_user(user, password)
        # Each server process loads the users on its next refresh (as each Kafka broker
        # does from its metadata): wait for all, or a first login races the load.
        loaded = f"loaded {len(PASSWORDS)} SCRAM user(s)"
        servers = len(b.children())
        wait_until(lambda: b.log_text().count(loaded) >= servers, 15, what=loaded)
        yield b
    finally:
        stop_and_check(b)
