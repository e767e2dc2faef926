"""``kvlog users`` and the Kafka listener's SASL settings against a real ``kvlog serve``
(CURVE for kvlog's wire, SCRAM for Kafka's): the README's walkthrough, step by step."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import Result
from clitest_util import Serve, cli, unique, wait_until


@dataclass
class SaslServe:
    serve: Serve
    keys: Path

    def as_(self, principal: str, *args: str, input: str | None = None) -> Result:
        props = self.keys / f"{principal}.properties"
        props.write_text(
            "security.protocol=curve\n"
            "curve.server.key=server.key\n"
            f"curve.secret.key={principal}.key_secret\n"
            "request.timeout.ms=10000\n"
        )
        return cli(
            *args,
            "--bootstrap-server",
            self.serve.bootstrap,
            "--command-config",
            str(props),
            input=input,
        )


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslServe]:
    root = tmp_path_factory.mktemp("users")
    keys, authorized = root / "keys", root / "authorized"
    for name in ("server", "admin", "alice"):
        assert cli("keys", "generate", name, "--dir", str(keys)).exit_code == 0
    authorized.mkdir()
    for name in ("admin", "alice"):
        shutil.copy(keys / f"{name}.key", authorized)
    server = Serve(
        root / "data",
        "--curve-secret-key",
        str(keys / "server.key_secret"),
        "--curve-authorized-keys",
        str(authorized),
        "--super-user",
        "admin",
        "--kafka-sasl-mechanisms",
        "SCRAM-SHA-256,SCRAM-SHA-512",
        "--log-level",
        "WARNING",
    )
    try:
        yield SaslServe(server, keys)
    finally:
        server.stop()
        server.kill()


def kafka_login(address: str, user: str, password: str, mechanism: str = "SCRAM-SHA-256") -> bool:
    """Whether kafka-python logs in (and lists topics) as ``user``, at the bootstrap and
    at the brokers it then finds (each process loads a new user within a moment)."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import (
        KafkaConnectionError,
        KafkaTimeoutError,
        SaslAuthenticationFailedError,
    )

    admin = None
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=address,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism=mechanism,
            sasl_plain_username=user,
            sasl_plain_password=password,
            request_timeout_ms=3000,
            bootstrap_timeout_ms=3000,
        )
        admin.list_topics()
        return True
    # A refused login: the listener answers SASL_AUTHENTICATION_FAILED and closes the
    # connection, which kafka-python reports in any of these ways.
    except (
        KafkaTimeoutError,
        SaslAuthenticationFailedError,
        KafkaConnectionError,
    ):
        return False
    finally:
        if admin is not None:
            admin.close()


def test_sasl_turns_the_kafka_listener_on(secured: SaslServe) -> None:
    serve = secured.serve
    assert serve.kafka_bootstrap is not None
    assert any("SASL_PLAINTEXT" in line for line in serve.banner if "Kafka bootstrap" in line)


def test_users_add_list_remove(secured: SaslServe, tmp_path: Path) -> None:
    kafka = secured.serve.kafka_bootstrap
    assert kafka is not None
    user = unique("billing")
    added = secured.as_("admin", "users", "add", user, "--password-stdin", input="s3cret\n")
    assert added.exit_code == 0, added.output
    assert added.output.strip() == (
        f"Added SCRAM user {user} (SCRAM-SHA-256, SCRAM-SHA-512; 4096 iterations)."
    )
    wait_until(lambda: kafka_login(kafka, user, "s3cret", "SCRAM-SHA-512"), 10, "the login")
    listed = json.loads(secured.as_("admin", "users", "list", "--json").output)
    assert {"name": user, "mechanisms": {"SCRAM-SHA-256": 4096, "SCRAM-SHA-512": 4096}} in listed
    table = secured.as_("admin", "users", "list")
    assert user in table.output and "SCRAM-SHA-512" in table.output
    assert "s3cret" not in table.output

    # A new password from a file, for one mechanism: the old one stops working.
    password_file = tmp_path / "password"
    password_file.write_text("n3w-secret\n")
    changed = secured.as_(
        "admin",
        "users",
        "add",
        user,
        "--password-file",
        str(password_file),
        "--mechanism",
        "SCRAM-SHA-256",
        "--iterations",
        "8192",
    )
    assert changed.exit_code == 0 and changed.output.startswith(f"Updated SCRAM user {user}")
    wait_until(lambda: kafka_login(kafka, user, "n3w-secret"), 10, "the new password")
    # Every listener takes the change within a moment: the old password stops working.
    wait_until(lambda: not kafka_login(kafka, user, "s3cret"), 5, "the old password refused")

    # Only super users manage users (alice is authorized on kvlog's wire, not a super user).
    refused = secured.as_("alice", "users", "add", "mallory", "--password-stdin", input="x\n")
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "principal 'alice' may not manage SCRAM users" in refused.output
    assert secured.as_("alice", "users", "list").exit_code == 1

    removed = secured.as_("admin", "users", "remove", user)
    assert removed.exit_code == 0, removed.output
    assert removed.output.strip() == f"Removed SCRAM user {user} (SCRAM-SHA-256, SCRAM-SHA-512)."
    wait_until(lambda: not kafka_login(kafka, user, "n3w-secret"), 5, "the refusal")
    again = secured.as_("admin", "users", "remove", user)
    assert again.exit_code == 1 and f"no SCRAM user '{user}'" in again.output
    reserved = secured.as_(
        "admin", "users", "add", "kvlog-internal", "--password-stdin", input="x\n"
    )
    assert reserved.exit_code == 1 and "reserved" in reserved.output
