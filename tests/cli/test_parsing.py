"""The CLI without a broker: help, argument checks and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clitest_util import cli

from kvlog.errors import InvalidConfigError
from kvlog.ipc.security import load_keys
from kvlog.tools.cli import COMMANDS, PERF_COMMANDS
from kvlog.tools.common import load_client_config, parse_pairs, read_properties
from kvlog.tools.serve import load_server_file

GROUPS = {
    "topics": ["create", "list", "describe", "delete", "alter", "elect-leaders"],
    "groups": ["list", "describe", "delete", "reset-offsets"],
    "keys": ["generate"],
    "acls": ["add", "list", "remove", "reload"],
    "users": ["add", "list", "remove"],
}


def test_every_command_has_help() -> None:
    assert cli("--help").exit_code == 0
    for name in COMMANDS:
        result = cli(name, "--help")
        assert result.exit_code == 0, (name, result.output)
        for sub in GROUPS.get(name, []):
            result = cli(name, sub, "--help")
            assert result.exit_code == 0, (name, sub, result.output)
    for name in PERF_COMMANDS:
        assert cli("perf", name, "--help").exit_code == 0


def test_top_level_help_lists_the_commands() -> None:
    out = cli("--help").output
    for name in ("serve", "status", "topics", "produce", "consume", "dump", "groups", "perf"):
        assert name in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["topics", "create"], "Missing argument 'NAME'"),
        (["topics", "create", "t", "--partitions", "0"], "--partitions"),
        (["topics", "create", "t", "--config", "retention.ms"], "key=value"),
        (["topics", "alter", "t"], "nothing to alter"),
        (["topics", "alter", "t", "--config", "a=1", "--delete-config", "a"], "both set"),
        (["consume", "t", "--offset", "5"], "--offset needs --partition"),
        (["consume", "t", "--group", "g", "--partition", "0"], "do not mix"),
        (["consume", "t", "--offset", "-3", "--partition", "0"], "must not be negative"),
        (["consume", "t", "--workers", "2"], "pool mode needs"),
        (["groups", "reset-offsets", "--group", "g", "--topic", "t"], "exactly one of"),
        (
            [
                "groups",
                "reset-offsets",
                "--group",
                "g",
                "--topic",
                "t",
                "--to-earliest",
                "--to-latest",
            ],
            "exactly one of",
        ),
        (
            [
                "groups",
                "reset-offsets",
                "--group",
                "g",
                "--topic",
                "t",
                "--to-datetime",
                "yesterday",
            ],
            "ISO 8601",
        ),
        (["acls", "add", "--principal", "p", "--operation", "read"], "give a resource"),
        (
            ["acls", "add", "--principal", "p", "--topic", "t", "--cluster", "--operation", "read"],
            "one resource",
        ),
        (["acls", "add", "--principal", "p", "--topic", "t", "--operation", "fly"], "fly"),
        (["acls", "remove"], "--principal and/or a resource"),
        (["topics", "list", "--bootstrap-server", "no-port-here"], "needs a port"),
        (["perf", "produce", "--acks", "2"], "--acks"),
        (["serve", "--kafka-listen", "9092"], "HOST:PORT"),
        (["serve", "--kafka-listen", "[::1]:9092"], "IPv4"),
        (["users", "add", "alice"], "--password-stdin or --password-file"),
        (["users", "add", "alice", "--password-stdin", "--iterations", "100"], "4096"),
        (["users", "add", "alice", "--password-stdin", "--mechanism", "PLAIN"], "PLAIN"),
        (["users", "add", "alice", "--password-stdin"], "the password is empty"),
        (["serve", "--kafka-ssl-client-auth", "maybe"], "maybe"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_status_of_a_data_dir_with_nothing_running(tmp_path: Path) -> None:
    # Nothing runs: exit 1, so scripts and health checks can tell (issue 13).
    result = cli("status", "--data-dir", str(tmp_path), "--json")
    assert result.exit_code == 1
    assert json.loads(result.output) == []
    result = cli("status", "--data-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "no kvlog processes are running" in result.output


def test_acls_reload_without_a_broker(tmp_path: Path) -> None:
    result = cli("acls", "reload", "--data-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "no kvlog broker is running" in result.output


def test_dump_refuses_a_dir_that_is_not_a_log_dir(tmp_path: Path) -> None:
    (tmp_path / "logs" / "0").mkdir(parents=True)
    result = cli("dump", "--log-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "not a kvlog log dir" in result.output
    assert "logs/0" in result.output


def test_keys_generate_writes_a_pair_and_refuses_to_overwrite(tmp_path: Path) -> None:
    result = cli("keys", "generate", "alice", "--dir", str(tmp_path / "keys"))
    assert result.exit_code == 0, result.output
    public, secret = tmp_path / "keys" / "alice.key", tmp_path / "keys" / "alice.key_secret"
    assert str(public) in result.output and str(secret) in result.output
    assert "principal:   alice" in result.output
    assert load_keys(public).principal == "alice"
    assert load_keys(secret).secret is not None
    assert secret.stat().st_mode & 0o077 == 0
    before = secret.read_text()
    again = cli("keys", "generate", "alice", "--dir", str(tmp_path / "keys"))
    assert again.exit_code == 1 and "--force" in again.output
    assert secret.read_text() == before
    assert (
        cli("keys", "generate", "alice", "--dir", str(tmp_path / "keys"), "--force").exit_code == 0
    )
    assert secret.read_text() != before
    bad = cli("keys", "generate", "no/slash", "--dir", str(tmp_path / "keys"))
    assert bad.exit_code == 1 and "key name" in bad.output


def test_server_file_keys_paths_and_closest_name(tmp_path: Path) -> None:
    path = tmp_path / "kvlog.toml"
    path.write_text(
        'listen = "tcp://127.0.0.1:9999"\n'
        'data_dir = "data"\n'
        'log_dirs = ["a", "/abs/b"]\n'
        'super_users = "admin"\n'
        '"group.initial.rebalance.delay.ms" = 0\n'
        "node.session.timeout.ms = 1000\n"
        "socket_request_max_bytes = 2048\n"
    )
    server, broker = load_server_file(path)
    assert server == {
        "listen": "tcp://127.0.0.1:9999",
        "data_dir": str(tmp_path / "data"),
        "log_dirs": [str(tmp_path / "a"), "/abs/b"],
        "super_users": ["admin"],
    }
    assert broker == {
        "group.initial.rebalance.delay.ms": 0,
        "node.session.timeout.ms": 1000,
        "socket_request_max_bytes": 2048,
    }
    path.write_text("group.initial.rebalance.delay = 0\n")
    with pytest.raises(
        InvalidConfigError, match=r"did you mean 'group\.initial\.rebalance\.delay\.ms'"
    ):
        load_server_file(path)
    path.write_text('listn = "tcp://127.0.0.1:1"\n')
    with pytest.raises(InvalidConfigError, match="did you mean 'listen'"):
        load_server_file(path)
    path.write_text("listen = 5\n")
    with pytest.raises(InvalidConfigError, match="must be a string"):
        load_server_file(path)
    path.write_text('kafka_listen = "0.0.0.0:19092"\nkafka_advertised_host = "10.0.0.5"\n')
    assert load_server_file(path)[0] == {
        "kafka_listen": "0.0.0.0:19092",
        "kafka_advertised_host": "10.0.0.5",
    }
    path.write_text('kafka_listen = "none"\n')
    assert load_server_file(path)[0] == {"kafka_listen": None}
    path.write_text('kafka_listen = "localhost"\n')
    with pytest.raises(InvalidConfigError, match="kafka_listen must be HOST:PORT"):
        load_server_file(path)


def test_serve_reports_config_errors_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "kvlog.toml"
    path.write_text("log.retention.check.interval = 10\n")
    result = cli("serve", "--config", str(path), "--data-dir", str(tmp_path / "d"))
    assert result.exit_code == 1
    assert "did you mean 'log.retention.check.interval.ms'" in result.output
    path.write_text('"node.session.timeout.ms" = 5\n')
    result = cli("serve", "--config", str(path), "--data-dir", str(tmp_path / "d"))
    assert result.exit_code == 1
    assert "node.session.timeout.ms=5 is too small" in result.output
    path.write_text("this is not toml\n")
    result = cli("serve", "--config", str(path))
    assert result.exit_code == 2 and "not valid TOML" in result.output
    assert not (tmp_path / "d").exists()


def test_command_config_files(tmp_path: Path) -> None:
    (tmp_path / "client.key_secret").write_text("x")
    props = tmp_path / "client.properties"
    props.write_text(
        "# comment\n! also a comment\n"
        "security.protocol=curve\n"
        "curve.secret.key: client.key_secret\n"
        "curve.server.key  rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7\n"
        "client.id = long \\\n   name\n"
    )
    assert read_properties(props) == {
        "security.protocol": "curve",
        "curve.secret.key": "client.key_secret",
        "curve.server.key": "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7",
        "client.id": "long name",
    }
    loaded = load_client_config(props)
    assert loaded["curve.secret.key"] == str(tmp_path / "client.key_secret")
    assert loaded["curve.server.key"] == "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
    toml = tmp_path / "client.toml"
    toml.write_text('security.protocol = "curve"\n"request.timeout.ms" = 500\n')
    assert load_client_config(toml) == {"security.protocol": "curve", "request.timeout.ms": 500}


def test_unknown_client_setting_names_the_closest(tmp_path: Path) -> None:
    props = tmp_path / "c.properties"
    props.write_text("security.protocl=curve\n")
    result = cli("topics", "list", "--command-config", str(props))
    assert result.exit_code == 1
    assert "did you mean 'security.protocol'" in result.output


def test_parse_pairs() -> None:
    assert parse_pairs(("a=1", "b==2", "c="), "--config") == {"a": "1", "b": "=2", "c": ""}


def test_key_separator_escapes() -> None:
    from kvlog.tools.console import _separator

    assert _separator("\\t") == b"\t"
    assert _separator("\t") == b"\t"
    assert _separator("::") == b"::"
    assert _separator("→") == "→".encode()
    assert _separator(None) is None


def test_kafka_security_settings_need_security_on(tmp_path: Path) -> None:
    # SASL and TLS name principals for the ACLs: without CURVE there are none.
    result = cli("serve", "--data-dir", str(tmp_path), "--kafka-sasl-mechanisms", "SCRAM-SHA-256")
    assert result.exit_code == 1, result.output
    assert "need security on" in result.output and "Traceback" not in result.output
    result = cli("serve", "--data-dir", str(tmp_path), "--kafka-sasl-mechanisms", "GSSAPI")
    assert result.exit_code == 1 and "'GSSAPI' is not served" in result.output
