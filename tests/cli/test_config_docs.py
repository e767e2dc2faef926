"""docs/CONFIG.md is generated from the config tables and must not go stale; PROTOCOL.md's
tables of defaults must agree with them."""

from __future__ import annotations

import enum
import re
from pathlib import Path

from clitest_util import cli

from kvlog.ipc.config import CONSUMER_SETTINGS, PRODUCER_SETTINGS
from kvlog.tools.config_docs import REGENERATE, render
from kvlog.topic_config import TOPIC_CONFIG
from kvlog.workers.config import BROKER_CONFIG

ROOT = Path(__file__).resolve().parents[2]


def test_docs_config_md_is_current() -> None:
    written = (ROOT / "docs" / "CONFIG.md").read_text()
    assert written == render(), f"docs/CONFIG.md is stale; regenerate it: {REGENERATE}"


def test_kvlog_config_docs_prints_the_tables() -> None:
    result = cli("config", "docs")
    assert result.exit_code == 0, result.output
    assert result.output == render()
    broker = cli("config", "docs", "--section", "broker")
    assert broker.exit_code == 0, broker.output
    assert "## Broker configs" in broker.output and "## Topic configs" not in broker.output
    for name in BROKER_CONFIG:
        assert f"| `{name}` |" in broker.output
    assert cli("config", "docs", "--section", "nope").exit_code == 2


def _shown(default: object) -> str:
    """A default as PROTOCOL.md writes it (numbers are compared as numbers)."""
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, enum.Enum):
        return default.name.lower()
    if isinstance(default, list):
        return ",".join(map(str, default))
    return str(default)


def _number(text: str) -> int:
    """'100 MiB' / '3000 ms' / '604800000 (7 days)' / '-1 (all)' -> the number."""
    value, _, unit = text.partition(" ")
    return int(value) << 20 if unit.startswith("MiB") else int(value)


def test_protocol_md_defaults_agree_with_the_tables() -> None:
    # Section 8 restates defaults for client writers in other languages: every row that
    # names config keys must give their defaults.
    text = (ROOT / "PROTOCOL.md").read_text()
    section = text[text.index("## 8. Limits and defaults") : text.index("### 8.4")]
    tables = (BROKER_CONFIG, TOPIC_CONFIG, PRODUCER_SETTINGS, CONSUMER_SETTINGS)
    checked = []
    for row in re.findall(r"^\|.+\|$", section, flags=re.MULTILINE):
        cells = [c.strip() for c in row.strip("|").split("|")]
        keys = [
            next((t[n] for t in tables if n in t), None)
            for n in re.findall(r"`([a-z.]+)`", cells[0])
        ]
        if not keys or None in keys:
            continue  # a header, or a limit that is no config key
        values = cells[1 if len(cells) == 3 else 2].split(", ")
        assert len(values) == len(keys), row
        for key, value in zip(keys, values, strict=True):
            assert key is not None
            if isinstance(key.default, int) and not isinstance(key.default, bool | enum.Enum):
                assert _number(value) == key.default, row
            else:
                assert value.strip("`") == _shown(key.default), row
            checked.append(key.name)
    assert len(checked) >= 25, checked
