"""The command line as Kafka users use it (issue 13): KVLOG_BOOTSTRAP_SERVERS and
KVLOG_COMMAND_CONFIG instead of flags on every command, one client.properties shared by
every tool, reset-offsets as a plan until --execute, a missing group said so with exit
1, topics list --json, --log-level, and the command an oversized record needs. Against
the session's ``kvlog serve``."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result
from clitest_util import Serve, unique

from kvlog.tools.cli import main


def run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, input=input, catch_exceptions=False)


def test_the_bootstrap_server_from_the_environment(serve: Serve) -> None:
    topic = unique("env")
    env = {"KVLOG_BOOTSTRAP_SERVERS": serve.bootstrap}
    assert run("topics", "create", topic, env=env).exit_code == 0
    listed = run("topics", "list", "--json", env=env)
    assert listed.exit_code == 0, listed.output
    assert topic in json.loads(listed.output)
    # A flag still wins over the environment.
    wrong = {"KVLOG_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    assert run("topics", "list", "--bootstrap-server", serve.bootstrap, env=wrong).exit_code == 0


def test_one_client_properties_file_serves_every_tool(serve: Serve, tmp_path: Path) -> None:
    topic = unique("shared")
    props = tmp_path / "client.properties"
    props.write_text(
        f"bootstrap.servers={serve.bootstrap}\n"
        "request.timeout.ms=20000\n"
        "acks=all\n"
        "linger.ms=0\n"
        "auto.offset.reset=earliest\n"
        "enable.auto.commit=false\n"
    )
    env = {"KVLOG_COMMAND_CONFIG": str(props)}
    assert run("topics", "create", topic, env=env).exit_code == 0
    produced = run("produce", topic, env=env, input="one\ntwo\n")
    assert produced.exit_code == 0, produced.output
    assert "ignoring auto.offset.reset, enable.auto.commit (not producer settings)" in (
        produced.output
    )
    group = ("--group", unique("shared-group"))  # a group starts where auto.offset.reset says
    consumed = run(
        "consume", topic, *group, "--max-messages", "2", "--timeout-ms", "20000", env=env
    )
    assert consumed.exit_code == 0, consumed.output
    assert consumed.stdout.splitlines()[:2] == ["one", "two"]
    assert "ignoring acks, linger.ms (not consumer settings)" in consumed.output
    assert consumed.output.count("ignoring") == 1
    # A name no client knows is still an error naming the closest one.
    props.write_text(f"bootstrap.servers={serve.bootstrap}\nack=all\n")
    refused = run("produce", topic, env=env, input="three\n")
    assert refused.exit_code == 1 and "acks" in refused.output, refused.output


def test_reset_offsets_is_a_plan_until_execute(serve: Serve) -> None:
    topic, group = unique("plan"), unique("plan-group")
    b = ("--bootstrap-server", serve.bootstrap)
    assert run("topics", "create", topic, *b).exit_code == 0
    assert run("produce", topic, *b, input="a\nb\nc\n").exit_code == 0
    reset = ("groups", "reset-offsets", "--group", group, "--topic", topic, "--to-latest", *b)
    plan = run(*reset)
    assert plan.exit_code == 0, plan.output
    assert "dry run" in plan.output and "--execute applies it" in plan.output
    missing = run("groups", "describe", group, *b)
    assert missing.exit_code == 1 and "does not exist" in missing.output, missing.output
    applied = run(*reset, "--execute")
    assert applied.exit_code == 0 and "offsets reset" in applied.output, applied.output
    described = run("groups", "describe", group, "--json", *b)
    assert described.exit_code == 0, described.output
    [row] = json.loads(described.output)[0]["partitions"]
    assert row["committed_offset"] == 3
    both = run(*reset, "--execute", "--dry-run")
    assert both.exit_code == 2 and "do not mix" in both.output


def test_describe_of_a_missing_group_says_so(serve: Serve) -> None:
    b = ("--bootstrap-server", serve.bootstrap)
    ghost = unique("nobody")
    result = run("groups", "describe", ghost, *b)
    assert result.exit_code == 1
    assert f"consumer group {ghost} does not exist" in result.output
    assert "Traceback" not in result.output
    as_json = run("groups", "describe", ghost, "--json", *b)
    assert as_json.exit_code == 1


def test_client_commands_take_a_log_level(serve: Serve) -> None:
    b = ("--bootstrap-server", serve.bootstrap)
    assert run("topics", "list", "--log-level", "DEBUG", *b).exit_code == 0
    bad = run("topics", "list", "--log-level", "LOUD", *b)
    assert bad.exit_code == 2


def test_an_oversized_record_prints_the_command_that_raises_the_limit(serve: Serve) -> None:
    topic = unique("big")
    b = ("--bootstrap-server", serve.bootstrap)
    created = run("topics", "create", topic, "--config", "max.message.bytes=1000", *b)
    assert created.exit_code == 0, created.output
    produced = run("produce", topic, *b, input="x" * 3000 + "\n")
    assert produced.exit_code == 1
    assert f"kvlog topics alter {topic} --config max.message.bytes=" in produced.output


def test_perf_produce_says_its_latency_is_mostly_queueing(serve: Serve) -> None:
    args = ("perf", "produce", "--bootstrap-server", serve.bootstrap, "--topic", unique("q"))
    result = run(*args, "--records", "2000")
    assert result.exit_code == 0, result.output
    assert "latency is mostly queueing" in result.output
    as_json = json.loads(run(*args, "--records", "2000", "--json").output)
    assert "mostly queueing" in as_json["latency_note"]


def test_shell_completion_as_the_readme_shows_it() -> None:
    env = {"_KVLOG_COMPLETE": "bash_complete", "COMP_WORDS": "kvlog gro", "COMP_CWORD": "1"}
    result = CliRunner().invoke(main, [], env=env, prog_name="kvlog")
    assert result.exit_code == 0, result.output
    assert "plain,groups" in result.output
    script = CliRunner().invoke(main, [], env={"_KVLOG_COMPLETE": "bash_source"}, prog_name="kvlog")
    assert "_kvlog_completion" in script.output
