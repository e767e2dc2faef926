"""``kvlog mirror`` to a SCRAM-secured target: the target's security settings (Kafka's
names, from --target-property) pass through to the mirror's connections, and a wrong
password is refused at the target (nothing is forwarded, the status says why)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from mirror_util import read_all

import kvlog
from kvlog.tools.cli import main
from kvlog.types import TopicPartition

_SECURITY = str(Path(__file__).resolve().parents[1] / "security")
if _SECURITY not in sys.path:
    sys.path.insert(0, _SECURITY)

from kafka_sasl_util import PASSWORDS  # noqa: E402
from sectest_util import KeyRing, start_secured_broker, stop_and_check  # noqa: E402

MECHANISM = "SCRAM-SHA-512"


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A kvlog whose Kafka listener takes SCRAM logins only (SASL_PLAINTEXT)."""
    ring = KeyRing(tmp_path_factory.mktemp("keys"))
    ring.create("admin")
    secured = start_secured_broker(
        tmp_path_factory.mktemp("target"),
        ring,
        kafka_listen="127.0.0.1:0",
        kafka_sasl_mechanisms=[MECHANISM],
    )
    try:
        with secured.admin() as admin:
            admin.upsert_scram_user("admin", PASSWORDS["admin"])
        yield secured
    finally:
        stop_and_check(secured)


def _login(password: str) -> dict[str, str]:
    return {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": MECHANISM,
        "sasl.username": "admin",
        "sasl.password": password,
    }


def test_a_mirror_logs_in_to_a_scram_secured_target(target: Any, tmp_path: Path) -> None:
    kafka = "kafka://" + target.broker.kafka_bootstrap
    with kvlog.Broker(tmp_path / "source", "tcp://127.0.0.1:0") as source:
        kvlog.Admin(bootstrap_servers=source.bootstrap).create_topic("secure.ev", partitions=2)
        with kvlog.Producer(bootstrap_servers=source.bootstrap) as producer:
            producer.send_batch("secure.ev", [b"e%d" % i for i in range(400)]).get(30)
        tps = [TopicPartition("secure.ev", p) for p in range(2)]

        def mirror(password: str, name: str) -> Any:
            args = ["mirror", "--to", kafka, "--topics", r"secure\..*", "--name", name]
            args += ["--state-dir", str(tmp_path / name), "--until-caught-up"]
            args += ["--bootstrap-server", source.bootstrap]
            for key, value in _login(password).items():
                args += ["--target-property", f"{key}={value}"]
            return CliRunner().invoke(main, args)

        refused = mirror("not-the-password", "wrong")
        assert refused.exit_code != 0
        assert "authentication" in refused.output.lower(), refused.output

        done = mirror(PASSWORDS["admin"], "right")
        assert done.exit_code == 0, done.output
        on_source = read_all(source.bootstrap, tps)
        # Read back in Kafka mode with the same settings (kafka-python's spelling works too).
        on_target = read_all(
            kafka,
            tps,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism=MECHANISM,
            sasl_plain_username="admin",
            sasl_plain_password=PASSWORDS["admin"],
        )
        for tp in tps:
            assert [r.value for r in on_target[tp]] == [r.value for r in on_source[tp]]
