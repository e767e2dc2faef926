"""The config table shape (kvlog.config_def) and the topic table built on it."""

from __future__ import annotations

import pytest

from kvlog.config_def import (
    BOOLEAN,
    STRING,
    STRING_LIST,
    ConfigDef,
    ConfigKey,
    format_default,
    integer,
    one_of,
    optional,
)
from kvlog.errors import InvalidConfigError
from kvlog.topic_config import (
    DAY_MS,
    TOPIC_CONFIG,
    UNLIMITED,
    effective_topic_config,
    validate_topic_config,
)

TABLE = ConfigDef(
    "test config",
    [
        ConfigKey("a.count.ms", integer(1), 60_000, "A count."),
        ConfigKey("b.small", integer(1, 5), 5, "Bounded."),
        ConfigKey("c.flag", BOOLEAN, False, "A flag."),
        ConfigKey("d.mode", one_of("fast", "safe"), "safe", "A mode | with a pipe."),
        ConfigKey("e.name", optional(STRING), None, "A name."),
        ConfigKey("f.items", STRING_LIST, [], "Items."),
    ],
)


def test_parse_accepts_native_values_and_their_spellings() -> None:
    got = TABLE.parse(
        {"a.count.ms": "7", "b_small": 2, "c.flag": "yes", "d.mode": "FAST", "f_items": "x"}
    )
    assert got == {
        "a.count.ms": 7,
        "b.small": 2,
        "c.flag": True,
        "d.mode": "fast",
        "f.items": ["x"],
    }
    assert TABLE.parse({"c.flag": "off", "e.name": None}) == {"c.flag": False, "e.name": None}
    assert TABLE.complete({"b.small": 3}) == {**TABLE.defaults(), "b.small": 3}
    assert TABLE.complete(None) == TABLE.defaults()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"a.count.ms": 0}, "a.count.ms=0 is too small; it must be >= 1"),
        ({"a.count.ms": True}, "a.count.ms must be an integer, got True"),
        ({"a.count.ms": 1.5}, "a.count.ms must be an integer, got 1.5"),
        ({"a.count.ms": "ten"}, "a.count.ms must be an integer, got 'ten'"),
        ({"b.small": 6}, r"b.small=6 is outside 1..5"),
        ({"c.flag": "maybe"}, "c.flag must be true or false"),
        ({"d.mode": "slow"}, "d.mode must be one of fast, safe, got 'slow'"),
        ({"e.name": 3}, "e.name must be a string, got 3"),
        ({"f.items": [1]}, "f.items must be a list of strings"),
        ({"a.count.m": 1}, "unknown test config 'a.count.m'; did you mean 'a.count.ms'"),
        ({"zzz": 1}, "unknown test config 'zzz'; known names: "),
    ],
)
def test_bad_names_and_values_are_refused_with_the_reason(values, message) -> None:
    with pytest.raises(InvalidConfigError, match=message.replace(".", r"\.").replace("|", r"\|")):
        TABLE.parse(values)


def test_snake_case_spellings_only_where_the_table_allows_them() -> None:
    assert TABLE.lookup("a_count_ms") is TABLE["a.count.ms"]
    strict = ConfigDef("strict", [ConfigKey("x.y", integer(), 0, "X.")], snake_case=False)
    assert strict.lookup("x_y") is None
    with pytest.raises(InvalidConfigError, match=r"did you mean 'x\.y'"):
        strict.parse({"x_y": 1})
    with pytest.raises(ValueError, match="twice"):
        ConfigDef("dup", [ConfigKey("x", STRING, "", "X."), ConfigKey("x", STRING, "", "X.")])


def test_markdown_has_a_row_per_setting_with_defaults_as_kafka_spells_them() -> None:
    text = TABLE.markdown()
    lines = text.splitlines()
    assert lines[0] == "| name | type | default | valid values | doc |"
    assert len(lines) == 2 + len(TABLE)
    assert "| `a.count.ms` | int | 60000 (1 min) | >= 1 | A count. |" in lines
    assert "| `c.flag` | boolean | false | true, false | A flag. |" in lines
    assert r"A mode \| with a pipe." in text  # a pipe in a doc does not split the row
    assert "| `e.name` | string | null |" in text
    used = ConfigDef("u", [ConfigKey("x", STRING, "", "X.", used_by=("node", "broker"))])
    assert "| `x` | string |  |  | node, broker | X. |" in used.markdown(used_by=True)


def test_format_default_reads_sizes_and_durations() -> None:
    def shown(name: str, value: object) -> str:
        return format_default(ConfigKey(name, STRING, value, ""))

    assert shown("a.bytes", 100 << 20) == "104857600 (100 MiB)"
    assert shown("a.bytes", 1000) == "1000"
    assert shown("a.ms", 7 * DAY_MS) == "604800000 (7 days)"
    assert shown("a.ms", 3_600_000) == "3600000 (1 h)"
    assert shown("a.ms", 90_000) == "90000"
    assert shown("a.ms", -1) == "-1"
    assert shown("a.list", ["range", "sticky"]) == "range,sticky"


def test_topic_table() -> None:
    assert TOPIC_CONFIG["retention.ms"].default == 7 * DAY_MS
    assert validate_topic_config({"retention.ms": "-1", "unclean.leader.election.enable": "1"}) == {
        "retention.ms": UNLIMITED,
        "unclean.leader.election.enable": True,
    }
    for bad in ({"retention.bytes": -2}, {"cleanup.policy": "compact,remove"}, {"retention_ms": 1}):
        with pytest.raises(InvalidConfigError):
            validate_topic_config(bad)
    # Case matters for topic string values (as in Kafka).
    with pytest.raises(InvalidConfigError, match=r"message\.timestamp\.type must be one of"):
        validate_topic_config({"message.timestamp.type": "createtime"})
    assert effective_topic_config({"retention.ms": 5}) == {
        **TOPIC_CONFIG.defaults(),
        "retention.ms": 5,
    }
