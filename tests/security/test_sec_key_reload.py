"""The authorized-keys directory is re-read on reload: a removed key is refused, an added
key accepted, by every server process, whether the reload comes from
``Broker.reload_security()`` or from SIGHUP sent by hand.

This module changes the authorized directory, so it has a broker and key ring of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from sectest_util import (
    KeyRing,
    RawDealer,
    sighup,
    start_secured_broker,
    stop_and_check,
    wait_until,
)

from kvlog.errors import UnauthenticatedError

RELOAD_S = 10.0  # a reload lands within a loop turn (~0.1 s); generous for a loaded box


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    ring = KeyRing(tmp_path_factory.mktemp("reload-keys"))
    ring.create("admin")
    for name in ("rita", "tom", "vic"):
        ring.create(name)
    for name in ("sam", "uma"):
        ring.create(name, authorize=False)
    return ring


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, keys: KeyRing) -> Iterator[Any]:
    b = start_secured_broker(Path(tmp_path_factory.mktemp("reload")), keys)
    try:
        yield b
    finally:
        stop_and_check(b)


def probe(endpoint: str, ring: KeyRing, name: str) -> str:
    """'accepted' (a ping is answered), 'refused' (the handshake failed) or 'silent'."""
    with RawDealer(endpoint, ring.curve(name)) as raw:
        with contextlib.suppress(zmq.Again):  # refused before the send: nowhere to queue it
            raw.send_request("ping")
        if raw.handshake_failed(3.0):
            return "refused"
        return "accepted" if raw.recv(3.0) is not None else "silent"


def probe_all(broker: Any, name: str) -> dict[str, str]:
    return {role: probe(ep, broker.ring, name) for role, ep in broker.endpoints().items()}


def await_all(broker: Any, name: str, state: str) -> None:
    last: dict[str, str] = {}

    def check() -> bool:
        last.update(probe_all(broker, name))
        return set(last.values()) == {state}

    try:
        wait_until(check, RELOAD_S, interval_s=0.1)
    except AssertionError:
        raise AssertionError(f"{name}: expected every process {state}, got {last}") from None


def list_topics_as(broker: Any, name: str) -> list[str]:
    with broker.admin(name, request_timeout_ms=5000) as admin:
        return admin.list_topics()


def server_pids(broker: Any) -> list[int]:
    return [c["pid"] for c in broker.children()]


def test_removed_key_is_refused_after_reload_security(broker: Any, keys: KeyRing) -> None:
    pids = broker.pids()
    assert set(probe_all(broker, "rita").values()) == {"accepted"}
    keys.revoke("rita")
    assert broker.broker.reload_security() == 3  # broker, node, coordinator
    await_all(broker, "rita", "refused")
    with pytest.raises(UnauthenticatedError):
        list_topics_as(broker, "rita")
    assert broker.pids() == pids, "a reload restarted a process"
    # Other keys are unaffected.
    assert set(probe_all(broker, "admin").values()) == {"accepted"}


def test_added_key_is_accepted_after_reload_security(broker: Any, keys: KeyRing) -> None:
    assert set(probe_all(broker, "sam").values()) == {"refused"}
    keys.authorize("sam")
    broker.broker.reload_security()
    await_all(broker, "sam", "accepted")
    assert isinstance(list_topics_as(broker, "sam"), list)


def test_sighup_by_hand_reloads_every_process(broker: Any, keys: KeyRing) -> None:
    pids = broker.pids()
    assert set(probe_all(broker, "tom").values()) == {"accepted"}
    assert set(probe_all(broker, "uma").values()) == {"refused"}
    keys.revoke("tom")
    keys.authorize("uma")
    sighup(server_pids(broker))
    await_all(broker, "tom", "refused")
    await_all(broker, "uma", "accepted")
    assert broker.pids() == pids, "SIGHUP killed or restarted a process"
    assert isinstance(list_topics_as(broker, "uma"), list)


def test_connected_client_of_a_removed_key_is_cut_off(broker: Any, keys: KeyRing) -> None:
    with broker.admin("vic", request_timeout_ms=5000) as admin:
        assert isinstance(admin.list_topics(), list)  # connected and working
        keys.revoke("vic")
        broker.broker.reload_security()
        await_all(broker, "vic", "refused")  # new connections are refused by now
        with pytest.raises(UnauthenticatedError):
            admin.list_topics()
