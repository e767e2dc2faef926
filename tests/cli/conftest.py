"""Fixtures for the CLI tests: one ``kvlog serve`` subprocess shared by the session.

The shared broker runs with a config file (the TOML path of ``kvlog serve --config``) that
turns off the initial rebalance delay, so group tests need not wait for it. Tests that
share it use their own topic and group names; tests that stop a broker start their own.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from clitest_util import Serve, pid_alive  # noqa: E402

SERVE_TOML = """\
log_level = "WARNING"
"group.initial.rebalance.delay.ms" = 0
group.min.session.timeout.ms = 500
"""


@pytest.fixture(scope="session")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    root = tmp_path_factory.mktemp("serve")
    config = root / "kvlog.toml"
    config.write_text(SERVE_TOML)
    server = Serve(root / "data", "--config", str(config))
    try:
        yield server
    finally:
        pids = server.pids() if server.proc.poll() is None else [server.proc.pid]
        server.stop()
        left = [pid for pid in pids if pid_alive(pid)]
        if left:
            server.kill()
        assert not left, f"kvlog serve left processes behind: {left}"
