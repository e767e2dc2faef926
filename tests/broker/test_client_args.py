"""ipc/client_args.py without a broker: what kvlog mode and Kafka mode check alike."""

from __future__ import annotations

import warnings

import pytest

from kvlog.errors import (
    IllegalStateError,
    InvalidConfigError,
    InvalidTimestampError,
    NetworkError,
    SerializationError,
    TopicAlreadyExistsError,
)
from kvlog.ipc.client_args import (
    NewTopic,
    PartitionMappingWarning,
    check_timestamp,
    create_each,
    header_value,
    new_topics,
    record_deserializers,
    record_serializers,
    split_consumer_args,
    subscription_args,
    warn_partition_mapping,
)


def test_subscribe_takes_topics_or_a_pattern_and_not_after_assign() -> None:
    assert subscription_args("a", None, False) == (["a"], None)
    topics, pattern = subscription_args((), "or.*s", False)
    assert topics == [] and pattern is not None and pattern.fullmatch("orders")
    for topics_, pattern_ in ((["a"], "b.*"), ((), None)):
        with pytest.raises(IllegalStateError, match="topics or a pattern"):
            subscription_args(topics_, pattern_, False)
    with pytest.raises(IllegalStateError, match="after assign"):
        subscription_args(["a"], None, True)


def test_consumer_settings_may_come_first() -> None:
    assert split_consumer_args(({"group_id": "g"}, "a", "b")) == ({"group_id": "g"}, ("a", "b"))
    assert split_consumer_args(("a",)) == (None, ("a",))


def test_serializers_none_means_bytes_untouched() -> None:
    plain = record_serializers({"key_serializer": None, "value_serializer": "json"})
    assert plain["raw_keys"] and not plain["raw_values"]
    assert plain["value_serializer"]({"a": 1}) == b'{"a":1}'
    settings = {"key_deserializer": None, "value_deserializer": "str"}
    keys_in, values_in = record_deserializers(settings)
    assert keys_in is None and values_in is not None and values_in(b"x") == "x"


def test_record_arguments() -> None:
    assert check_timestamp(0) == 0
    for bad in (True, 1.5, -1, 1 << 63):
        with pytest.raises(InvalidTimestampError):
            check_timestamp(bad)
    assert header_value(bytearray(b"v")) == b"v"
    with pytest.raises(SerializationError, match="header values must be bytes"):
        header_value("text")


def test_create_topics_spellings_and_results() -> None:
    assert new_topics(["a"]) == [NewTopic("a")]
    assert new_topics({"b": {"num_partitions": 2}}) == [NewTopic("b", 2, -1, None, None)]
    with pytest.raises(InvalidConfigError):
        new_topics([])

    def create(topic: NewTopic) -> str:
        if topic.name == "taken":
            raise TopicAlreadyExistsError("exists")
        return f"id-{topic.name}"

    topics = [NewTopic("taken"), NewTopic("new")]
    report = create_each(topics, lambda _t: None, create, raise_errors=False)
    assert [(r["name"], r["topic_id"], r["error_code"]) for r in report["topics"]] == [
        ("taken", "", int(TopicAlreadyExistsError("x").code)),
        ("new", "id-new", 0),
    ]
    with pytest.raises(TopicAlreadyExistsError):  # raised after every topic was tried
        create_each(topics, lambda _t: None, create, raise_errors=True)

    def down(_topic: NewTopic) -> str:
        raise NetworkError("the broker went away")

    with pytest.raises(NetworkError):  # the cluster's error, not the topic's: at once
        create_each(topics, lambda _t: None, down, raise_errors=False)


def test_the_partition_mapping_warning_names_the_callers_line() -> None:
    def create_partitions() -> None:
        warn_partition_mapping("t", 3, 5)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        create_partitions()  # the line the warning points at
    (w,) = caught
    assert issubclass(w.category, PartitionMappingWarning) and "3 to 5" in str(w.message)
    with open(__file__) as source:
        line = next(i for i, text in enumerate(source, 1) if "# the line the warning" in text)
    assert (w.filename, w.lineno) == (__file__, line)
