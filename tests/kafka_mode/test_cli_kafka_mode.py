"""The client commands of tests/cli/test_with_broker.py (topics, produce, consume,
groups) with ``--bootstrap-server kafka://...``: the same commands and outputs against a
Kafka cluster (kvlog serve's own Kafka listener stands in for one)."""

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_CLI = str(Path(__file__).resolve().parents[1] / "cli")
if _CLI not in sys.path:
    sys.path.insert(0, _CLI)

import test_with_broker  # noqa: E402
from clitest_util import Serve  # noqa: E402
from kafka_mode_util import KafkaView  # noqa: E402

test_topics_create_list_describe_alter_delete = (
    test_with_broker.test_topics_create_list_describe_alter_delete
)
test_produce_from_stdin_and_consume_it_back = (
    test_with_broker.test_produce_from_stdin_and_consume_it_back
)
test_produce_errors_are_one_line = test_with_broker.test_produce_errors_are_one_line
test_console_tools_as_real_processes = test_with_broker.test_console_tools_as_real_processes
test_groups_describe_reset_and_delete = test_with_broker.test_groups_describe_reset_and_delete


# tests/cli/conftest.py's shared broker settings.
SERVE_TOML = """\
log_level = "WARNING"
"group.initial.rebalance.delay.ms" = 0
group.min.session.timeout.ms = 500
"""


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("serve")
    config = root / "kvlog.toml"
    config.write_text(SERVE_TOML)
    server = Serve(root / "data", "--config", str(config))
    try:
        yield KafkaView(server)
    finally:
        server.stop()
