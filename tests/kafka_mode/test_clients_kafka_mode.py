"""tests/broker/test_clients.py in Kafka mode (see conftest.py).

Left out: the tests that check kvlog's own ZeroMQ wire with a raw client (the stored
compression codec, ACL requests refused without security), which Kafka mode does not use.
"""

import functools

import pytest
import test_clients
from test_clients import *  # noqa: F403

del test_compression_round_trip  # noqa: F821 - a raw ZeroMQ client checks the stored codec
del test_acl_ops_without_security_are_security_disabled  # noqa: F821 - ZeroMQ ACL requests


# kvlog's Kafka listener serves Metadata v0-8, which carries no topic ids (v10+ does):
# Kafka mode's create_topic/describe_topic give "" there (a real Kafka cluster's ids
# otherwise). Strict: this fails loudly once the listener sends them.
# A wrapper carries the mark: marking test_clients' own function would mark it in
# tests/broker too whenever this module is collected first.
@pytest.mark.xfail(strict=True, reason="no topic ids on Metadata v0-8 (kvlog's Kafka listener)")
@functools.wraps(test_clients.test_admin_topic_lifecycle)
def test_admin_topic_lifecycle(*args, **kwargs):  # type: ignore[no-untyped-def]
    return test_clients.test_admin_topic_lifecycle(*args, **kwargs)
