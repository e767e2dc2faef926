"""What every test directory shares: the one switch for long test runs.

``KVLOG_LONG_TESTS=1`` runs the tests marked ``long`` (minutes-long fault runs) and makes
the property tests thorough (tests/log: more examples, more crash rounds); without it they
are skipped or kept short, so the suite stays a few minutes.
"""

from __future__ import annotations

import os

import pytest

LONG_TESTS = os.environ.get("KVLOG_LONG_TESTS") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if LONG_TESTS:
        return
    skip = pytest.mark.skip(reason="a long run (several minutes): set KVLOG_LONG_TESTS=1")
    for item in items:
        if item.get_closest_marker("long") is not None:
            item.add_marker(skip)
