"""docs/OPERATIONS.md and the systemd unit it installs (docs/kvlog.service): the unit is
valid for systemd (``systemd-analyze verify`` where systemd's tools are installed; its
sections, keys and values always), runs a real ``kvlog serve`` command line, and the
manual names only commands, files and tests that exist. Its backup and restore procedure
is tests/broker/test_backup_restore.py."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from kvlog.tools.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "docs" / "kvlog.service"
MANUAL = ROOT / "docs" / "OPERATIONS.md"

# The directives the unit may use, per section (systemd.unit(5), systemd.service(5),
# systemd.exec(5), systemd.kill(5)): a misspelt key is caught here even where systemd's
# own tools are missing.
KNOWN = {
    "Unit": {"Description", "Documentation", "After", "Before", "Wants", "Requires"},
    "Service": {
        "Type",
        "User",
        "Group",
        "ExecStart",
        "ExecReload",
        "KillMode",
        "KillSignal",
        "TimeoutStopSec",
        "Restart",
        "RestartSec",
        "StateDirectory",
        "StateDirectoryMode",
        "WorkingDirectory",
        "LimitNOFILE",
        "NoNewPrivileges",
        "PrivateTmp",
        "ProtectSystem",
        "ProtectHome",
        "Environment",
    },
    "Install": {"WantedBy"},
}
VALUES = {
    ("Service", "Type"): {"simple", "exec", "notify"},
    ("Service", "Restart"): {"no", "on-failure", "always", "on-abnormal"},
    ("Service", "KillMode"): {"control-group", "mixed", "process"},
    ("Service", "KillSignal"): {"SIGTERM", "SIGINT"},
    ("Service", "NoNewPrivileges"): {"yes", "no"},
    ("Service", "PrivateTmp"): {"yes", "no"},
    ("Service", "ProtectSystem"): {"yes", "full", "strict", "no"},
    ("Service", "ProtectHome"): {"yes", "read-only", "tmpfs", "no"},
}


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_has_systemds_sections_keys_and_values() -> None:
    unit = _unit()
    assert unit.sections() == ["Unit", "Service", "Install"]
    for section in unit.sections():
        unknown = set(unit[section]) - KNOWN[section]
        assert not unknown, f"[{section}] has unknown keys {unknown}"
    for (section, key), allowed in VALUES.items():
        if key in unit[section]:
            assert unit[section][key] in allowed, (section, key, unit[section][key])
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    for key in ("TimeoutStopSec", "RestartSec", "LimitNOFILE"):
        assert unit["Service"][key].isdigit(), key
    assert re.fullmatch(r"0[0-7]{3}", unit["Service"]["StateDirectoryMode"])


def test_the_unit_runs_a_real_kvlog_serve_command_line() -> None:
    from kvlog.tools.serve import serve

    argv = shlex.split(_unit()["Service"]["ExecStart"])
    assert argv[0].startswith("/") and argv[0].endswith("/kvlog")
    assert argv[1] == "serve"
    flags = {opt for param in serve.params for opt in getattr(param, "opts", [])}
    given = [a for a in argv[2:] if a.startswith("--")]
    assert given and set(given) <= flags, given
    reload = shlex.split(_unit()["Service"]["ExecReload"])
    assert reload[1:] == ["-HUP", "$MAINPID"], "kvlog serve re-reads its keys on SIGHUP"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists; stand one in where it would be.
    binary = tmp_path / "kvlog"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    unit = tmp_path / "kvlog.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/kvlog", str(binary)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # verify only warns about bad keys


def test_the_manual_names_only_what_exists() -> None:
    text = MANUAL.read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    command = re.compile(r"^\s*(?:sudo )?kvlog (\w[\w-]*)", re.M)
    used = {m for block in blocks for m in command.findall(block)}
    assert used and used <= set(COMMANDS), used - set(COMMANDS)
    for link in re.findall(r"\]\(([^)#:]+)\)", text):
        assert (MANUAL.parent / link).exists(), link
    for path in re.findall(r"`(tests/[\w/]+\.py)`", text):
        assert (ROOT / path).is_file(), path
    for heading in ("systemd", "Sizing", "Backup and restore", "Upgrading", "A full disk"):
        assert heading in text
    assert "[CONFIG.md](CONFIG.md)" in text, "every setting: the generated table"
