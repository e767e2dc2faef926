"""Kafka's wire with security off (real processes): PLAINTEXT listeners, ACL APIs answered
SECURITY_DISABLED as Kafka answers without an authorizer (from both libraries' admin
clients, at the broker and at the coordinator), SASL requests answered
ILLEGAL_SASL_STATE, and SCRAM users that can be prepared before security is turned on."""

from __future__ import annotations

import pytest
from kafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest
from kafka.protocol.metadata import MetadataRequest
from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest
from kafka_broker import KafkaBroker
from kafka_wire import RawClient

import kvlog

SECURITY_DISABLED, ILLEGAL_SASL_STATE = 54, 34


@pytest.fixture(scope="module")
def broker(kafka_broker: KafkaBroker) -> KafkaBroker:
    return kafka_broker  # shared (tests/kafka/conftest.py); default config: no security


def test_the_listeners_are_plaintext(broker: KafkaBroker) -> None:
    assert broker.kafka_security_protocol == "PLAINTEXT"


def test_acl_apis_answer_security_disabled(broker: KafkaBroker) -> None:
    everything = {
        "resource_type_filter": 1,
        "resource_name_filter": None,
        "pattern_type_filter": 1,
        "principal_filter": None,
        "host_filter": None,
        "operation": 1,
        "permission_type": 1,
    }
    acl = CreateAclsRequest.AclCreation(
        resource_type=2,
        resource_name="t",
        resource_pattern_type=3,
        principal="User:alice",
        host="*",
        operation=3,
        permission_type=3,
    )
    for address in (broker.kafka_bootstrap, broker.kafka_coordinator):
        with RawClient(address) as raw:
            for version in (0, 1):
                described = raw.send(DescribeAclsRequest(version=version, **everything))
                assert described.error_code == SECURITY_DISABLED
                assert "security is off" in described.error_message
                created = raw.send(CreateAclsRequest(version=version, creations=[acl]))
                assert [r.error_code for r in created.results] == [SECURITY_DISABLED]
                deleted = raw.send(
                    DeleteAclsRequest(
                        version=version, filters=[DeleteAclsRequest.DeleteAclsFilter(**everything)]
                    )
                )
                assert [r.error_code for r in deleted.filter_results] == [SECURITY_DISABLED]


def test_both_admin_clients_see_security_disabled(broker: KafkaBroker) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        KafkaAdminClient,
        ResourcePatternFilter,
    )
    from kafka.admin import ResourceType as KResourceType
    from kafka.errors import SecurityDisabledError

    acl = AclBinding(
        ResourceType.TOPIC,
        "t",
        ResourcePatternType.LITERAL,
        "User:alice",
        "*",
        AclOperation.READ,
        AclPermissionType.ALLOW,
    )
    confluent = AdminClient({"bootstrap.servers": broker.kafka_bootstrap})
    with pytest.raises(KafkaException, match="SECURITY_DISABLED"):
        confluent.create_acls([acl])[acl].result(15)
    admin = KafkaAdminClient(bootstrap_servers=broker.kafka_bootstrap, request_timeout_ms=15000)
    try:
        with pytest.raises(SecurityDisabledError):
            admin.describe_acls(
                ACLFilter(
                    None,
                    None,
                    ACLOperation.ANY,
                    ACLPermissionType.ANY,
                    ResourcePatternFilter(KResourceType.ANY, None, ACLResourcePatternType.ANY),
                )
            )
    finally:
        admin.close()


def test_sasl_requests_get_illegal_sasl_state_and_the_connection_stays(
    broker: KafkaBroker,
) -> None:
    with RawClient(broker.kafka_coordinator) as raw:
        assert raw.send(SaslHandshakeRequest(mechanism="SCRAM-SHA-256", version=1)).error_code == (
            ILLEGAL_SASL_STATE
        )
        answer = raw.send(SaslAuthenticateRequest(auth_bytes=b"n,,n=a,r=b", version=1))
        assert answer.error_code == ILLEGAL_SASL_STATE and "not in progress" in answer.error_message
        assert raw.send(MetadataRequest(topics=[], version=1)).brokers


def test_scram_users_can_be_prepared_before_security_is_on(broker: KafkaBroker) -> None:
    with kvlog.Admin(bootstrap_servers=broker.bootstrap) as admin:
        assert admin.upsert_scram_user("later", "pw", ["SCRAM-SHA-512"], 8192) is True
        assert {"name": "later", "mechanisms": {"SCRAM-SHA-512": 8192}} in admin.list_scram_users()
        assert admin.remove_scram_user("later") == ["SCRAM-SHA-512"]
        with pytest.raises(kvlog.errors.InvalidRequestError, match="reserved"):
            admin.upsert_scram_user("kvlog-internal", "pw")
