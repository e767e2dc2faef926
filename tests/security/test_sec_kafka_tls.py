"""TLS on Kafka's wire (real processes): SASL_SSL with confluent-kafka, kafka-python and
kcat, and SSL with client certificates as the login (the subject's CN is the principal).

Certificates are made fresh for the module (tls_util.Pki); nothing private is
committed."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kafka_sasl_util import (
    PASSWORDS,
    MetadataRequest,
    RawKafka,
    coordinator,
    scram_login,
)
from sectest_util import (
    KeyRing,
    SecuredBroker,
    await_topic_acl,
    start_secured_broker,
    stop_and_check,
    unique,
    wait_until,
)
from tls_util import Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def sasl_ssl(
    tmp_path_factory: pytest.TempPathFactory, ring: KeyRing, pki: Pki
) -> Iterator[SecuredBroker]:
    cert, key = pki.issue("server", "127.0.0.1", server=True)
    b = start_secured_broker(
        tmp_path_factory.mktemp("sasl_ssl"),
        ring,
        kafka_listen="127.0.0.1:0",
        kafka_sasl_mechanisms=["SCRAM-SHA-256"],
        kafka_ssl_certfile=cert,
        kafka_ssl_keyfile=key,
    )
    try:
        with b.admin() as admin:
            admin.upsert_scram_user("alice", PASSWORDS["alice"])
        yield b
    finally:
        stop_and_check(b)


@pytest.fixture(scope="module")
def mtls(
    tmp_path_factory: pytest.TempPathFactory, ring: KeyRing, pki: Pki
) -> Iterator[SecuredBroker]:
    cert, key = pki.issue("server-mtls", "127.0.0.1", server=True)
    b = start_secured_broker(
        tmp_path_factory.mktemp("mtls"),
        ring,
        kafka_listen="127.0.0.1:0",
        kafka_ssl_certfile=cert,
        kafka_ssl_keyfile=key,
        kafka_ssl_cafile=pki.ca_file,
        kafka_ssl_client_auth="required",
    )
    try:
        yield b
    finally:
        stop_and_check(b)


def client_tls(pki: Pki, cert: Any = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def test_sasl_ssl_with_confluent_kafka_kafka_python_and_kcat(
    sasl_ssl: SecuredBroker, pki: Pki
) -> None:
    from confluent_kafka.admin import AdminClient
    from kafka.admin import KafkaAdminClient

    assert sasl_ssl.broker.kafka_security_protocol == "SASL_SSL"
    topic = unique("tls")
    with sasl_ssl.admin() as admin:
        admin.create_topic(topic)
        admin.add_acl("alice", "topic", topic, "describe")
    await_topic_acl(sasl_ssl, "alice", topic)
    bootstrap = sasl_ssl.broker.kafka_bootstrap
    confluent = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": "alice",
            "sasl.password": PASSWORDS["alice"],
            "ssl.ca.location": str(pki.ca_file),
        }
    )
    wait_until(lambda: topic in confluent.list_topics(timeout=10).topics, 20)
    kafka_python = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_plain_username="alice",
        sasl_plain_password=PASSWORDS["alice"],
        ssl_cafile=str(pki.ca_file),
    )
    try:
        assert topic in kafka_python.list_topics()
    finally:
        kafka_python.close()
    if shutil.which("kcat"):
        listed = subprocess.run(
            [
                "kcat",
                "-b",
                bootstrap,
                "-m",
                "10",
                "-X",
                "security.protocol=SASL_SSL",
                "-X",
                "sasl.mechanisms=SCRAM-SHA-256",
                "-X",
                "sasl.username=alice",
                "-X",
                f"sasl.password={PASSWORDS['alice']}",
                "-X",
                f"ssl.ca.location={pki.ca_file}",
                "-L",
                "-t",
                topic,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert f'topic "{topic}" with 1 partitions' in listed.stdout
    # TLS, then a wrong password: refused as on SASL_PLAINTEXT.
    with RawKafka(coordinator(sasl_ssl), tls=client_tls(pki)) as raw:
        assert not scram_login(raw, "alice", "wrong").ok
    assert "authenticated as 'alice' (SCRAM-SHA-256)" in sasl_ssl.log_text()


def test_plaintext_against_a_tls_listener_is_closed(sasl_ssl: SecuredBroker, pki: Pki) -> None:
    # A Kafka request where a TLS handshake is expected.
    with (
        RawKafka(coordinator(sasl_ssl)) as raw,
        pytest.raises(AssertionError, match="connection closed"),
    ):
        raw.send(MetadataRequest(topics=[], version=1))
    assert "TLS: " in sasl_ssl.log_text()
    with RawKafka(coordinator(sasl_ssl), tls=client_tls(pki)) as raw:  # serving on
        assert scram_login(raw, "alice", PASSWORDS["alice"]).ok
        assert raw.send(MetadataRequest(topics=[], version=1)).brokers


def test_client_certificates_are_principals(mtls: SecuredBroker, pki: Pki) -> None:
    from confluent_kafka.admin import AdminClient
    from kafka.admin import KafkaAdminClient
    from kafka.errors import GroupAuthorizationFailedError

    assert mtls.broker.kafka_security_protocol == "SSL"
    alice, bob = pki.issue("alice", "alice"), pki.issue("bob", "bob")
    topic, group = unique("mtls"), unique("g")
    with mtls.admin() as admin:
        admin.create_topic(topic)
        admin.add_acl("alice", "topic", topic, "describe")
        admin.add_acl("alice", "group", group, "read")
    await_topic_acl(mtls, "alice", topic)
    bootstrap = mtls.broker.kafka_bootstrap

    def kafka_python(cert: tuple[Any, Any]) -> KafkaAdminClient:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap,
            security_protocol="SSL",
            ssl_cafile=str(pki.ca_file),
            ssl_certfile=str(cert[0]),
            ssl_keyfile=str(cert[1]),
        )

    as_alice, as_bob = kafka_python(alice), kafka_python(bob)
    try:
        assert topic in as_alice.list_topics()
        assert as_alice.list_group_offsets(group) in ({group: {}}, {})
        assert topic not in as_bob.list_topics()
        with pytest.raises(GroupAuthorizationFailedError):
            as_bob.list_group_offsets(group)
    finally:
        as_alice.close()
        as_bob.close()
    confluent = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SSL",
            "ssl.ca.location": str(pki.ca_file),
            "ssl.certificate.location": str(alice[0]),
            "ssl.key.location": str(alice[1]),
        }
    )
    assert topic in confluent.list_topics(timeout=10).topics
    log = mtls.log_text()
    assert "authenticated as 'alice' (TLS client certificate)" in log
    assert "authenticated as 'bob' (TLS client certificate)" in log


def test_certificates_that_name_no_usable_principal_are_refused(
    mtls: SecuredBroker, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    address = coordinator(mtls)
    refused = {
        "no CN": pki.issue("nocn", None),
        "kvlog's own principal": pki.issue("internal", "kvlog-internal"),
        "another CA": Pki(tmp_path_factory.mktemp("other")).issue("eve", "admin"),
        "no certificate": None,
    }
    for what, cert in refused.items():
        # Refused in the handshake (an alert: SSLError) or right after it (closed).
        with (
            pytest.raises((AssertionError, ssl.SSLError, ConnectionResetError)) as outcome,
            RawKafka(address, tls=client_tls(pki, cert)) as raw,
        ):
            raw.send(MetadataRequest(topics=[], version=1))
        if outcome.type is AssertionError:
            assert "connection closed" in str(outcome.value), what
    log = mtls.log_text()
    assert "client certificate names no usable principal (CN None)" in log
    assert "client certificate names no usable principal (CN 'kvlog-internal')" in log
    with RawKafka(address, tls=client_tls(pki, pki.issue("carol", "carol"))) as raw:
        assert raw.send(MetadataRequest(topics=[], version=1)).brokers  # serving on
