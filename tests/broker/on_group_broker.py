"""``from on_group_broker import admin, broker`` in a module of tests/broker: its ``broker``
and ``admin`` are the session's ``group_broker`` and ``group_admin`` (tests/broker/
conftest.py), whose new consumer groups start after 100 ms instead of Kafka's 3 s."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def broker(group_broker: Any) -> Any:
    return group_broker


@pytest.fixture
def admin(group_admin: Any) -> Any:
    return group_admin
