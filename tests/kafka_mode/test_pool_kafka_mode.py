"""tests/broker/test_undecodable_records.py in Kafka mode (see conftest.py): undecodable
records, and ConsumerPool's worker processes with a kafka:// bootstrap.

Left out: the warning of a group that starts at the end (kvlog mode's consumer counts the
records auto.offset.reset=latest skips; librdkafka resets positions inside, unseen)."""

from test_undecodable_records import *  # noqa: F403

del test_a_group_that_starts_at_the_end_says_what_it_skips  # noqa: F821
# That module's broker and admin fixtures are tests/broker's group broker; this folder's
# conftest.py gives Kafka mode's.
del broker, admin  # noqa: F821
