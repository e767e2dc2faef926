"""tests/groups/test_groups_integration.py in Kafka mode (see conftest.py): the same
consumer-group tests, every consumer (in this process and in the child processes) made
from the Kafka listener's ``kafka://`` bootstrap."""

from collections.abc import Iterator
from typing import Any

import pytest
from group_procs import BROKER_CONFIG
from kafka_mode_util import KafkaView
from test_groups_integration import *  # noqa: F403

import kvlog

# Not run in Kafka mode, and why:
# - it starts a broker of its own (its bootstrap is kvlog's wire): it runs in kvlog mode;
del test_group_and_offsets_survive_a_coordinator_sigkill  # noqa: F821
# - they read kvlog's group member inside the consumer (``consumer._group``: generation,
#   member id, state, need_rejoin), here or in the child processes (_group_child.py);
#   librdkafka does not expose those (not done: issue 18's report);
del test_one_partition_four_consumers_one_reads_three_stand_by_and_one_takes_over  # noqa: F821
del test_no_partition_is_read_by_two_members_at_once_through_join_leave_and_kill  # noqa: F821
del test_partitions_are_lost_when_the_session_expires  # noqa: F821
del test_close_during_a_rebalance_leaves_the_group_at_once  # noqa: F821
del test_cooperative_member_dropped_mid_rebalance_stops_reading_its_partitions  # noqa: F821
# - max.poll.interval.ms below session.timeout.ms, which librdkafka refuses at creation;
del test_commit_after_max_poll_interval_raises_commit_failed_naming_cause_and_setting  # noqa: F821
del test_max_poll_interval_leaves_raises_and_rejoins  # noqa: F821
# - the 'sticky' assignor, which librdkafka lacks (Kafka mode refuses it by name:
#   tests/kafka_mode/test_kafka_mode_settings.py).
del test_sticky_keeps_what_it_can_when_a_member_joins  # noqa: F821


@pytest.fixture(scope="module")
def broker(broker: KafkaView) -> KafkaView:
    """This folder's shared broker (conftest.py, which has tests/groups' BROKER_CONFIG),
    over the kvlog-mode one the star import above brings."""
    assert {k: broker.config[k] for k in BROKER_CONFIG} == BROKER_CONFIG
    return broker


@pytest.fixture
def admin(broker: KafkaView) -> Iterator[Any]:
    with kvlog.Admin(bootstrap_servers=broker.bootstrap) as a:
        yield a
