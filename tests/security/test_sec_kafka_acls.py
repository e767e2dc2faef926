"""Kafka's ACL APIs (DescribeAcls, CreateAcls, DeleteAcls) from kafka-python's and
confluent-kafka's admin clients, on the ACL store ``kvlog acls`` manages (real
processes, SCRAM logins). An ACL created on one wire is listed and enforced on the other;
what kvlog's ACLs cannot express is refused with a message saying what they can."""

from __future__ import annotations

from typing import Any

import pytest
from kafka_sasl_util import PASSWORDS, confluent_config, kafka_python_config
from sectest_util import SecuredBroker, unique, wait_until


def confluent_admin(b: SecuredBroker, user: str) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(confluent_config(b.broker.kafka_bootstrap, user, PASSWORDS[user]))


def kafka_python_admin(b: SecuredBroker, user: str) -> Any:
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(**kafka_python_config(b.broker.kafka_bootstrap, user, PASSWORDS[user]))


def kvlog_acls(b: SecuredBroker, principal: str) -> set[tuple[str, str, str]]:
    with b.admin() as admin:
        return {
            (e["resource_type"], e["name"], e["operation"])
            for e in admin.list_acls()
            if e["principal"] == principal
        }


def test_confluent_kafka_creates_describes_and_deletes_acls(sasl: SecuredBroker) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        AdminClient,
        NewTopic,
        ResourcePatternType,
        ResourceType,
    )

    principal, topic = unique("dave"), unique("acl")
    admin = confluent_admin(sasl, "admin")

    def binding(kind: Any, name: str, op: Any, **kw: Any) -> Any:
        return AclBinding(
            kind,
            name,
            kw.get("pattern", ResourcePatternType.LITERAL),
            kw.get("principal", f"User:{principal}"),
            kw.get("host", "*"),
            op,
            kw.get("permission", AclPermissionType.ALLOW),
        )

    good = [
        binding(ResourceType.TOPIC, topic, AclOperation.READ),
        binding(ResourceType.GROUP, "*", AclOperation.READ),
        binding(ResourceType.BROKER, "kafka-cluster", AclOperation.DESCRIBE),
    ]
    for future in admin.create_acls(good).values():
        assert future.result(15) is None
    assert kvlog_acls(sasl, principal) == {
        ("topic", topic, "read"),
        ("group", "*", "read"),
        ("cluster", "kvlog", "describe"),
    }
    refused = {
        "pattern type 4 (PREFIXED": binding(
            ResourceType.TOPIC, topic, AclOperation.READ, pattern=ResourcePatternType.PREFIXED
        ),
        "permission type 2": binding(
            ResourceType.TOPIC, topic, AclOperation.READ, permission=AclPermissionType.DENY
        ),
        "principal 'Group:x'": binding(
            ResourceType.TOPIC, topic, AclOperation.READ, principal="Group:x"
        ),
        "host '10.0.0.1'": binding(ResourceType.TOPIC, topic, AclOperation.READ, host="10.0.0.1"),
        "operation 2": binding(ResourceType.TOPIC, topic, AclOperation.ALL),
    }
    for what, acl in refused.items():
        with pytest.raises(KafkaException) as error:
            admin.create_acls([acl])[acl].result(15)
        assert "INVALID_REQUEST" in str(error.value) and "kvlog ACLs allow" in str(error.value)
        assert what in str(error.value)

    everything = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        f"User:{principal}",
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    described = admin.describe_acls(everything).result(15)
    assert sorted((b.restype, b.name, b.operation) for b in described) == sorted(
        [
            (ResourceType.TOPIC, topic, AclOperation.READ),
            (ResourceType.GROUP, "*", AclOperation.READ),
            (ResourceType.BROKER, "kafka-cluster", AclOperation.DESCRIBE),
        ]
    )
    assert all(b.permission_type == AclPermissionType.ALLOW and b.host == "*" for b in described)
    # MATCH finds the literal name and the wildcard; PREFIXED and DENY find nothing.
    match = AclBindingFilter(
        ResourceType.GROUP,
        "payments",
        ResourcePatternType.MATCH,
        None,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    assert [b.name for b in admin.describe_acls(match).result(15) if principal in b.principal] == [
        "*"
    ]
    for pattern, permission in (
        (ResourcePatternType.PREFIXED, AclPermissionType.ANY),
        (ResourcePatternType.ANY, AclPermissionType.DENY),
    ):
        nothing = AclBindingFilter(
            ResourceType.ANY, None, pattern, None, None, AclOperation.ANY, permission
        )
        assert admin.describe_acls(nothing).result(15) == []
    # The ACL is enforced: dave (a new SCRAM user) may read the topic's metadata now.
    with sasl.admin() as kvlog_admin:
        kvlog_admin.upsert_scram_user(principal, "dave-secret")
        kvlog_admin.create_topic(topic)
    dave = AdminClient(confluent_config(sasl.broker.kafka_bootstrap, principal, "dave-secret"))
    wait_until(lambda: topic in dave.list_topics(topic, timeout=10).topics, 20)
    other = unique("no")
    with pytest.raises(KafkaException, match=f"principal '{principal}' may not create topic"):
        dave.create_topics([NewTopic(other, 1, 1)])[other].result(15)
    deleted = admin.delete_acls([everything])[everything].result(15)
    assert len(deleted) == 3
    assert kvlog_acls(sasl, principal) == set()


def test_kafka_python_creates_describes_and_deletes_acls(sasl: SecuredBroker) -> None:
    from kafka.admin import (
        ACL,
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourcePatternFilter,
        ResourceType,
    )

    principal, group = unique("erin"), unique("g")
    admin = kafka_python_admin(sasl, "admin")
    try:
        acl = ACL(
            f"User:{principal}",
            "*",
            ACLOperation.READ,
            ACLPermissionType.ALLOW,
            ResourcePattern(ResourceType.GROUP, group),
        )
        result = admin.create_acls([acl])
        assert result["succeeded"] == [acl] and result["failed"] == []
        # An ACL added with kvlog acls shows through DescribeAcls.
        with sasl.admin() as kvlog_admin:
            kvlog_admin.add_acl(principal, "topic", "*", "write")
        everything = ACLFilter(
            f"User:{principal}",
            None,
            ACLOperation.ANY,
            ACLPermissionType.ANY,
            ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
        )
        described, error = admin.describe_acls(everything)
        assert error.__name__ == "NoError"
        assert sorted(
            (a.resource_pattern.resource_type, a.resource_pattern.resource_name, a.operation)
            for a in described
        ) == [
            (ResourceType.TOPIC, "*", ACLOperation.WRITE),
            (ResourceType.GROUP, group, ACLOperation.READ),
        ]
        [(_, removed, error)] = admin.delete_acls([everything])
        assert error.__name__ == "NoError" and len(removed) == 2
        assert kvlog_acls(sasl, principal) == set()
    finally:
        admin.close()


def test_acl_apis_need_the_cluster_permissions(sasl: SecuredBroker) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    bob = confluent_admin(sasl, "bob")
    acl = AclBinding(
        ResourceType.TOPIC,
        "t",
        ResourcePatternType.LITERAL,
        "User:bob",
        "*",
        AclOperation.WRITE,
        AclPermissionType.ALLOW,
    )
    with pytest.raises(KafkaException) as refused:
        bob.create_acls([acl])[acl].result(15)
    assert "CLUSTER_AUTHORIZATION_FAILED" in str(refused.value)
    assert "principal 'bob' may not alter cluster 'kvlog'" in str(refused.value)
    everything = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        None,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    with pytest.raises(KafkaException, match="may not alter cluster"):
        bob.delete_acls([everything])[everything].result(15)
    # DescribeAcls' refusal through kafka-python (confluent-kafka's describe_acls hands a
    # refused DescribeAcls back as an empty list rather than raising).
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePatternFilter,
    )
    from kafka.admin import ResourceType as KafkaResourceType
    from kafka.errors import ClusterAuthorizationFailedError

    kp_bob = kafka_python_admin(sasl, "bob")
    try:
        with pytest.raises(ClusterAuthorizationFailedError, match="may not describe cluster"):
            kp_bob.describe_acls(
                ACLFilter(
                    None,
                    None,
                    ACLOperation.ANY,
                    ACLPermissionType.ANY,
                    ResourcePatternFilter(KafkaResourceType.ANY, None, ACLResourcePatternType.ANY),
                )
            )
    finally:
        kp_bob.close()
    assert kvlog_acls(sasl, "bob") == set()
