"""Members that stop before their first join completes must not stay in the group as
ghosts (issue 13, bug 2). A broker with Kafka's default group.initial.rebalance.delay.ms
(3 s) holds a new group's first join that long, as in the issue.

The client asks for its member id first (KIP-394), so close() can leave with it; the
CLI's --timeout-ms counts from the assignment and says it is joining meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from brokertest_util import unique_topic

import kvlog

# The checkout whose kvlog this test imported: the CLI subprocess runs the same code.
CHECKOUT = Path(kvlog.__file__).resolve().parents[1]


def _members(admin: Any, group: str) -> list[Any]:
    from kvlog.errors import GroupIdNotFoundError

    try:
        return list(admin.describe_groups([group])[0].get("members", []))
    except GroupIdNotFoundError:
        return []


def test_a_consumer_closed_while_its_first_join_waits_leaves_no_ghost(broker: Any) -> None:
    # The shared broker (conftest.py) has the default config: its
    # group.initial.rebalance.delay.ms is 3000, Kafka's default; the group is new.
    topic, group = unique_topic("ghost"), unique_topic("ghost-group")
    with kvlog.Admin(bootstrap_servers=broker.bootstrap) as admin:
        admin.create_topic(topic, partitions=2)
        early = kvlog.Consumer(topic, group_id=group, bootstrap_servers=broker.bootstrap)
        try:
            deadline = time.monotonic() + 1.0  # well inside the 3 s the first join waits
            while time.monotonic() < deadline:
                assert early.poll(timeout_ms=100) == {}
            assert early.assignment() == set(), "the join should still be waiting"
        finally:
            early.close()
        assert _members(admin, group) == [], "the closed consumer stayed in the group"

        with kvlog.Producer(bootstrap_servers=broker.bootstrap) as producer:
            producer.send(topic, value=b"after", partition=1).get(timeout=10)
        later = kvlog.Consumer(
            topic,
            group_id=group,
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
        )
        try:
            # A ghost would hold the rebalance for its rebalance timeout (5 minutes) or its
            # session (45 s); without one the join takes the initial delay.
            got: list[Any] = []
            deadline = time.monotonic() + 15
            while not got and time.monotonic() < deadline:
                got = [r for rs in later.poll(timeout_ms=200).values() for r in rs]
            assert [r.value for r in got] == [b"after"]
        finally:
            later.close()


def test_cli_timeout_counts_from_the_assignment_and_leaves(broker: Any) -> None:
    topic, group = unique_topic("orders"), unique_topic("billing")
    with kvlog.Admin(bootstrap_servers=broker.bootstrap) as admin:
        admin.create_topic(topic, partitions=1)
        with kvlog.Producer(bootstrap_servers=broker.bootstrap) as producer:
            for i in range(5):
                producer.send(topic, value=b"order%d" % i)
            producer.flush(10)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "kvlog.tools.cli",
                "consume",
                topic,
                "--group",
                group,
                "--from-beginning",
                "--timeout-ms",
                "3000",
                "--bootstrap-server",
                broker.bootstrap,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=CHECKOUT,
        )
        took = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        assert f"joining group {group} ..." in done.stderr
        assert done.stdout.splitlines() == [f"order{i}" for i in range(5)], done.stderr
        assert took >= 3.0 + 3.0 - 0.5, "the initial rebalance delay was counted as silence"
        assert _members(admin, group) == [], "the CLI consumer stayed in the group"
        committed = admin.list_group_offsets(group)
        assert committed == {kvlog.TopicPartition(topic, 0): 5}
