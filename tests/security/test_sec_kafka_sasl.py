"""Kafka clients log in with SASL/SCRAM to a secured kvlog (real processes).

One broker per module with CURVE on kvlog's wire and SCRAM-SHA-256/512 on Kafka's; SCRAM
users ``admin`` (a super user), ``alice`` (ACLs given per test) and ``bob`` (none), added
through kvlog's admin op as ``kvlog users add`` does. Checked: both mechanisms with
kafka-python, confluent-kafka and kcat; ACL verdicts on the Kafka wire naming the
principal, resource and operation; wrong passwords and unknown users (indistinguishable);
a removed user; a plaintext client; garbage and out-of-order SASL requests; the v0
handshake's bare tokens; every process serving on after all of it.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess

import pytest
from kafka_sasl_util import (
    PASSWORDS,
    ApiVersionsRequest,
    MetadataRequest,
    RawKafka,
    SaslAuthenticateRequest,
    SaslHandshakeRequest,
    confluent_config,
    coordinator,
    kafka_python_config,
    listeners,
    scram_login,
    server_first_salt,
)
from sectest_util import SecuredBroker, await_topic_acl, unique, wait_until

import kvlog

FAILED = (
    "Authentication failed during authentication due to invalid credentials with SASL mechanism {}"
)


def login_ok(address: str, user: str, password: str, mechanism: str = "SCRAM-SHA-256") -> bool:
    with RawKafka(address) as raw:
        return scram_login(raw, user, password, mechanism).ok


def test_the_listeners_start_with_sasl_and_say_so(sasl: SecuredBroker) -> None:
    assert sasl.broker.kafka_security_protocol == "SASL_PLAINTEXT"
    assert sasl.broker.kafka_off_reason is None and sasl.broker.kafka_bootstrap
    log = sasl.log_text()
    assert "broker: Kafka listener on" in log and "SASL_PLAINTEXT)" in log


def test_scram_users_with_and_without_acls(sasl: SecuredBroker) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic
    from kafka.admin import KafkaAdminClient
    from kafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

    topic, group = unique("orders"), unique("billing")
    with sasl.admin() as admin:
        admin.add_acl("alice", "topic", topic, "create")
        admin.add_acl("alice", "group", group, "read")

    # alice, SCRAM-SHA-512 through librdkafka: her ACL lets her create the topic.
    alice = AdminClient(
        confluent_config(sasl.broker.kafka_bootstrap, "alice", PASSWORDS["alice"], "SCRAM-SHA-512")
    )

    def created() -> bool:
        future = alice.create_topics([NewTopic(topic, 1, 1)])[topic]
        try:
            future.result(15)
        except KafkaException as exc:
            assert "TOPIC_AUTHORIZATION_FAILED" in str(exc), exc  # the ACL on its way
            return False
        return True

    wait_until(created, 10, what="alice's create ACL")

    # bob, the same request: refused, and told who may not do what to which resource.
    bob = AdminClient(confluent_config(sasl.broker.kafka_bootstrap, "bob", PASSWORDS["bob"]))
    other = unique("orders")
    with pytest.raises(KafkaException) as refused:
        bob.create_topics([NewTopic(other, 1, 1)])[other].result(15)
    assert f"principal 'bob' may not create topic '{other}'" in str(refused.value)

    # kafka-python, SCRAM-SHA-256: alice's group is hers to read, not bob's.
    kp_alice = KafkaAdminClient(
        **kafka_python_config(sasl.broker.kafka_bootstrap, "alice", PASSWORDS["alice"])
    )
    kp_bob = KafkaAdminClient(
        **kafka_python_config(sasl.broker.kafka_bootstrap, "bob", PASSWORDS["bob"])
    )
    try:
        assert kp_alice.list_group_offsets(group) in ({group: {}}, {})
        with pytest.raises(GroupAuthorizationFailedError):
            kp_bob.list_group_offsets(group)
        with pytest.raises(TopicAuthorizationFailedError):  # (DeleteTopics v3: no message)
            kp_bob.delete_topics([topic])
        # Metadata leaves out what bob may not describe; alice sees her topic.
        assert topic not in kp_bob.list_topics()
    finally:
        kp_alice.close()
        kp_bob.close()
    log = sasl.log_text()
    assert "authenticated as 'alice' (SCRAM-SHA-512)" in log
    assert "authenticated as 'bob' (SCRAM-SHA-256)" in log


def test_wrong_password_and_unknown_user_are_indistinguishable(sasl: SecuredBroker) -> None:
    address = coordinator(sasl)
    answers = {}
    for user, password in (("alice", "wrong"), ("nobody", "whatever"), ("nobody", "again")):
        with RawKafka(address) as raw:
            login = scram_login(raw, user, password)
            assert login.first.error_code == 0  # the exchange runs to the client's proof
            assert login.final is not None and login.final.error_code == 58
            assert login.final.error_message == FAILED.format("SCRAM-SHA-256")
            assert raw.closed_by_peer()
            answers.setdefault(user, []).append(server_first_salt(login.first.auth_bytes))
    # An unknown user's salt is stable, like a real user's, and shaped the same.
    assert answers["nobody"][0] == answers["nobody"][1]
    (real_salt, real_iterations), (decoy_salt, decoy_iterations) = (
        answers["alice"][0],
        answers["nobody"][0],
    )
    assert len(real_salt) == len(decoy_salt) and real_iterations == decoy_iterations == "4096"
    # Every listener answers the decoy with the same salt (one secret for the group).
    with RawKafka(sasl.broker.kafka_bootstrap) as raw:
        assert server_first_salt(scram_login(raw, "nobody", "x").first.auth_bytes)[0] == decoy_salt
    # The server's log says which it was.
    log = sasl.log_text()
    assert "wrong password (user 'alice')" in log and "unknown user (user 'nobody')" in log
    assert login_ok(address, "alice", PASSWORDS["alice"])


def test_confluent_and_kafka_python_report_a_failed_login(
    sasl: SecuredBroker, caplog: pytest.LogCaptureFixture
) -> None:
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AdminClient
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaTimeoutError

    errors: list[KafkaError] = []
    client = AdminClient(
        confluent_config(sasl.broker.kafka_bootstrap, "alice", "wrong", error_cb=errors.append)
    )

    def failed() -> list[KafkaError]:
        client.poll(0.2)
        return errors

    wait_until(failed, 15, what="librdkafka's authentication error")
    assert errors[0].code() == KafkaError._AUTHENTICATION
    assert FAILED.format("SCRAM-SHA-256") in errors[0].str()
    # kafka-python retries a failed login until its bootstrap times out, logging why.
    with caplog.at_level(logging.WARNING, logger="kafka"), pytest.raises(KafkaTimeoutError):
        KafkaAdminClient(
            **kafka_python_config(sasl.broker.kafka_bootstrap, "nobody", "x"),
            bootstrap_timeout_ms=3000,
        )
    assert FAILED.format("SCRAM-SHA-256") in caplog.text


def test_a_removed_user_is_refused_on_its_next_connection(sasl: SecuredBroker) -> None:
    address = coordinator(sasl)
    with sasl.admin() as admin:
        assert admin.upsert_scram_user("carol", "carol-1", ["SCRAM-SHA-256"]) is True
    wait_until(lambda: login_ok(address, "carol", "carol-1"), 5, what="carol's login")
    with RawKafka(address) as open_conn:
        assert scram_login(open_conn, "carol", "carol-1").ok
        assert open_conn.send(MetadataRequest(topics=[], version=1)).brokers
        # A new password works within a second everywhere, the old one no longer.
        with sasl.admin() as admin:
            assert admin.upsert_scram_user("carol", "carol-2", ["SCRAM-SHA-256"]) is False
        wait_until(lambda: login_ok(address, "carol", "carol-2"), 2, 0.05, "the new password")
        assert not login_ok(address, "carol", "carol-1")
        with sasl.admin() as admin:
            assert admin.remove_scram_user("carol") == ["SCRAM-SHA-256"]
            with pytest.raises(kvlog.errors.ResourceNotFoundError):
                admin.remove_scram_user("carol")
        for listener in listeners(sasl):
            wait_until(
                lambda listener=listener: not login_ok(listener, "carol", "carol-2"),
                2,
                0.05,
                f"carol refused at {listener}",
            )
        # Her open connection goes at its next request.
        with pytest.raises(AssertionError, match="connection closed"):
            open_conn.send(MetadataRequest(topics=[], version=1))
    assert "SCRAM user 'carol' was removed" in sasl.log_text()


def test_a_plaintext_client_against_a_sasl_listener_is_closed(sasl: SecuredBroker) -> None:
    for address in (sasl.broker.kafka_bootstrap, coordinator(sasl)):
        with RawKafka(address) as raw:
            # ApiVersions is answered before a login (clients ask it first), and lists SASL.
            versions = raw.send(ApiVersionsRequest(version=2))
            assert {k.api_key for k in versions.api_keys} >= {17, 36}
            with pytest.raises(AssertionError, match="connection closed"):
                raw.send(MetadataRequest(topics=[], version=1))
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AdminClient

    errors: list[KafkaError] = []
    plain = AdminClient(
        {"bootstrap.servers": sasl.broker.kafka_bootstrap, "error_cb": errors.append}
    )
    with pytest.raises(Exception):  # noqa: B017 - librdkafka's timeout, whatever its type
        plain.list_topics(timeout=3)
    assert "Metadata before SASL authentication" in sasl.log_text()
    assert login_ok(sasl.broker.kafka_bootstrap, "bob", PASSWORDS["bob"])  # still serving


def test_garbage_and_out_of_order_sasl_requests(sasl: SecuredBroker) -> None:
    address = coordinator(sasl)
    # Garbage tokens: SASL_AUTHENTICATION_FAILED, then closed.
    for token in (b"", b"\xff\xfe\x00", b"n,,n=alice", b"x" * 4000, os.urandom(64)):
        with RawKafka(address) as raw:
            assert (
                raw.send(SaslHandshakeRequest(mechanism="SCRAM-SHA-256", version=1)).error_code == 0
            )
            answer = raw.send(SaslAuthenticateRequest(auth_bytes=token, version=1))
            assert answer.error_code == 58 and answer.error_message == FAILED.format(
                "SCRAM-SHA-256"
            )
            assert raw.closed_by_peer()
    # A final message with a garbage proof.
    with RawKafka(address) as raw:
        raw.send(SaslHandshakeRequest(mechanism="SCRAM-SHA-512", version=1))
        first = raw.send(
            SaslAuthenticateRequest(auth_bytes=b"n,,n=alice,r=abcdefghijkl", version=1)
        )
        nonce = first.auth_bytes.decode().split(",")[0][2:]
        final = raw.send(
            SaslAuthenticateRequest(auth_bytes=f"c=biws,r={nonce},p=AAAA".encode(), version=1)
        )
        assert final.error_code == 58 and raw.closed_by_peer()
    # An unknown mechanism: UNSUPPORTED_SASL_MECHANISM with the list, then closed.
    with RawKafka(address) as raw:
        answer = raw.send(SaslHandshakeRequest(mechanism="PLAIN", version=1))
        assert answer.error_code == 33
        assert answer.mechanisms == ["SCRAM-SHA-256", "SCRAM-SHA-512"]
        assert raw.closed_by_peer()
    # SaslAuthenticate first: ILLEGAL_SASL_STATE, then closed.
    with RawKafka(address) as raw:
        answer = raw.send(SaslAuthenticateRequest(auth_bytes=b"n,,n=a,r=b", version=1))
        assert answer.error_code == 34 and raw.closed_by_peer()
    # After a login, SASL requests get ILLEGAL_SASL_STATE and the connection stays.
    with RawKafka(address) as raw:
        assert scram_login(raw, "bob", PASSWORDS["bob"]).ok
        assert raw.send(SaslHandshakeRequest(mechanism="SCRAM-SHA-256", version=1)).error_code == 34
        assert raw.send(MetadataRequest(topics=[], version=1)).brokers
    # An unauthenticated frame over 512 KiB (sasl.server.max.receive.size): closed unread.
    with RawKafka(address) as raw:
        raw.sendall(struct.pack(">i", 600 * 1024) + b"\x00" * 1024)
        assert raw.closed_by_peer()
    assert login_ok(address, "bob", PASSWORDS["bob"])  # the process serves on


def test_handshake_v0_bare_tokens(sasl: SecuredBroker) -> None:
    """Clients of Kafka 0.10 send bare SASL tokens after SaslHandshake v0."""
    import scramp

    with RawKafka(coordinator(sasl)) as raw:
        assert raw.send(SaslHandshakeRequest(mechanism="SCRAM-SHA-512", version=0)).error_code == 0
        client = scramp.ScramClient(["SCRAM-SHA-512"], "alice", PASSWORDS["alice"])
        client.set_server_first(raw.send_raw_token(client.get_client_first().encode()).decode())
        client.set_server_final(raw.send_raw_token(client.get_client_final().encode()).decode())
        assert raw.send(MetadataRequest(topics=[], version=1)).brokers
    with RawKafka(coordinator(sasl)) as raw:  # a wrong password: closed without an answer
        raw.send(SaslHandshakeRequest(mechanism="SCRAM-SHA-256", version=0))
        client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", "wrong")
        client.set_server_first(raw.send_raw_token(client.get_client_first().encode()).decode())
        with pytest.raises(AssertionError, match="connection closed"):
            raw.send_raw_token(client.get_client_final().encode())


@pytest.mark.skipif(
    shutil.which("kcat") is None, reason="kcat is not installed (apt-get install kcat)"
)
def test_kcat_lists_the_brokers_with_scram(sasl: SecuredBroker) -> None:
    topic = unique("kcat")
    with sasl.admin() as admin:
        admin.create_topic(topic)
        admin.add_acl("alice", "topic", topic, "describe")
    await_topic_acl(sasl, "alice", topic)
    base = ["kcat", "-b", sasl.broker.kafka_bootstrap, "-m", "10"]
    sasl_args = ["-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanisms=SCRAM-SHA-256"]

    def run(user: str, password: str) -> subprocess.CompletedProcess[str]:
        creds = ["-X", f"sasl.username={user}", "-X", f"sasl.password={password}"]
        return subprocess.run(
            [*base, *sasl_args, *creds, "-L", "-t", topic],
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = wait_until(lambda: (r := run("alice", PASSWORDS["alice"])).returncode == 0 and r, 20)
    assert f'topic "{topic}" with 1 partitions' in listed.stdout
    assert "2147483647" in listed.stdout  # the coordinator, listed as a broker
    refused = run("alice", "wrong")
    assert refused.returncode != 0
    assert "Authentication failed" in refused.stderr + refused.stdout
