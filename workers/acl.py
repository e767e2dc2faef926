"""ACLs: who may do what to which topic, group, transactional id or the cluster. Pure logic
plus storage.

With security on, everything is denied unless an ACL allows it (Kafka's
``allow.everyone.if.no.acl.found=false``); ``super.users`` and kvlog's own processes
bypass ACLs. An entry is (principal, resource type, resource name, operation); the
principal ``*`` and the name ``*`` match any. As in Kafka, read, write, delete and alter
imply describe.

ACLs live in the coordinator's store (table ``acls``) with a version that grows on each
change; the broker and nodes open that store read-only and reload when the version moves.

:data:`OP_PERMISSIONS` is the one place that says which permission each op needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import cbor2

from kvlog.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    InvalidRequestError,
    KvlogError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailedError,
)
from kvlog.log import ReadTxn, WriteTxn

ACLS_TABLE = "acls"
ACL_VERSION_KEY = b"acl_version"
CONTROLLER_TABLE = "controller"
INTERNAL_PRINCIPAL = "kvlog-internal"
ANONYMOUS = "ANONYMOUS"
# Names no client may authenticate as (a SCRAM user, a certificate's CN): kvlog's own
# processes' principal, Kafka's unauthenticated one, and the ACL wildcard.
RESERVED_PRINCIPALS = frozenset((INTERNAL_PRINCIPAL, ANONYMOUS, "*"))

# Kafka's TOPIC, GROUP, CLUSTER and TRANSACTIONAL_ID resource types.
RESOURCE_TYPES = ("topic", "group", "cluster", "transactional_id")
OPERATIONS = ("read", "write", "create", "delete", "describe", "alter")
_IMPLIES_DESCRIBE = {"read", "write", "delete", "alter"}


@dataclass(frozen=True, order=True)
class AclEntry:
    principal: str
    resource_type: str
    name: str
    operation: str

    def __post_init__(self) -> None:
        if self.resource_type not in RESOURCE_TYPES:
            raise InvalidRequestError(f"resource type must be one of {RESOURCE_TYPES}")
        if self.operation not in OPERATIONS:
            raise InvalidRequestError(f"operation must be one of {OPERATIONS}")
        if not self.principal or not self.name:
            raise InvalidRequestError("an ACL needs a principal and a resource name")

    def key(self) -> bytes:
        return cbor2.dumps([self.principal, self.resource_type, self.name, self.operation])

    def as_dict(self) -> dict[str, str]:
        return {
            "principal": self.principal,
            "resource_type": self.resource_type,
            "name": self.name,
            "operation": self.operation,
        }


def acl_version(r: ReadTxn) -> int:
    raw = r.get(CONTROLLER_TABLE, ACL_VERSION_KEY)
    return int(raw) if raw else 0


def load_acls(r: ReadTxn) -> list[AclEntry]:
    return [AclEntry(*cbor2.loads(key)) for key, _ in r.items(ACLS_TABLE)]


def _bump(w: WriteTxn) -> None:
    w.put(CONTROLLER_TABLE, ACL_VERSION_KEY, str(acl_version(w) + 1).encode())


def add_acl(w: WriteTxn, entry: AclEntry) -> bool:
    if w.get(ACLS_TABLE, entry.key()) is not None:
        return False
    w.put(ACLS_TABLE, entry.key(), b"")
    _bump(w)
    return True


def remove_acls(w: WriteTxn, match: Callable[[AclEntry], bool]) -> list[AclEntry]:
    gone = [e for e in load_acls(w) if match(e)]
    for entry in gone:
        w.delete(ACLS_TABLE, entry.key())
    if gone:
        _bump(w)
    return gone


_DENIED: dict[str, type[KvlogError]] = {
    "topic": TopicAuthorizationFailedError,
    "group": GroupAuthorizationFailedError,
    "cluster": ClusterAuthorizationFailedError,
    "transactional_id": TransactionalIdAuthorizationFailedError,
}


class Authorizer:
    """Answers "may this principal do this?"; immutable snapshot of the ACLs."""

    def __init__(self, entries: Iterable[AclEntry], super_users: Iterable[str] = ()) -> None:
        self.entries = list(entries)
        self.super_users = set(super_users) | {INTERNAL_PRINCIPAL}
        self._grants: dict[tuple[str, str], list[AclEntry]] = {}
        for entry in self.entries:
            self._grants.setdefault((entry.resource_type, entry.operation), []).append(entry)

    def allowed(self, principal: str, resource_type: str, name: str, operation: str) -> bool:
        if principal in self.super_users:
            return True
        ops = [operation]
        if operation == "describe":
            ops += sorted(_IMPLIES_DESCRIBE)
        for op in ops:
            for entry in self._grants.get((resource_type, op), ()):
                if entry.principal in (principal, "*") and entry.name in (name, "*"):
                    return True
        return False

    def check(self, principal: str, resource_type: str, name: str, operation: str) -> None:
        if not self.allowed(principal, resource_type, name, operation):
            option = resource_type.replace("_", "-")
            where = "--cluster" if resource_type == "cluster" else f"--{option} {name}"
            raise _DENIED[resource_type](
                f"principal {principal!r} may not {operation} {resource_type} {name!r}; an "
                f"admin can allow it with: kvlog acls add --principal {principal} {where} "
                f"--operation {operation}"
            )

    def may_write_any_topic(self, principal: str) -> bool:
        if principal in self.super_users:
            return True
        return any(
            e.principal in (principal, "*") for e in self._grants.get(("topic", "write"), ())
        )


# -- the checks, with typed arguments (both wires call these) ------------------------------

CLUSTER_NAME = "kvlog"


def check_cluster(auth: Authorizer, principal: str, operation: str) -> None:
    auth.check(principal, "cluster", CLUSTER_NAME, operation)


def check_internal(auth: Authorizer, principal: str) -> None:
    """Only kvlog's own processes."""
    if principal != INTERNAL_PRINCIPAL:
        raise ClusterAuthorizationFailedError(
            f"principal {principal!r} may not call internal ops (kvlog's own processes only)"
        )


def check_super_user(auth: Authorizer, principal: str, what: str) -> None:
    """Only super users (and kvlog's own processes): managing SCRAM users, whose names are
    principals, would otherwise let an ACL holder mint any principal, a super user's too."""
    if principal not in auth.super_users:
        raise ClusterAuthorizationFailedError(
            f"principal {principal!r} may not {what}: only super users may (kvlog serve "
            "--super-user NAME)"
        )


def check_topics(auth: Authorizer, principal: str, topics: Iterable[str], operation: str) -> None:
    for topic in sorted(set(topics)):
        auth.check(principal, "topic", topic, operation)


def check_create_topic(auth: Authorizer, principal: str, name: str) -> None:
    """Create on the cluster, or on the topic."""
    if not auth.allowed(principal, "cluster", CLUSTER_NAME, "create"):
        auth.check(principal, "topic", name, "create")


def check_groups(
    auth: Authorizer, principal: str, group_ids: Iterable[str], operation: str
) -> None:
    for group_id in group_ids:
        auth.check(principal, "group", group_id, operation)


def check_init_producer_id(auth: Authorizer, principal: str) -> None:
    """A producer id for a principal that may write some topic."""
    if not auth.may_write_any_topic(principal):
        raise ClusterAuthorizationFailedError(
            f"principal {principal!r} may write no topic, so it gets no producer id; an admin "
            f"can allow it with: kvlog acls add --principal {principal} --topic T "
            "--operation write"
        )


def check_offset_commit(
    auth: Authorizer, principal: str, group_id: str, topics: Iterable[str]
) -> None:
    """Read on the group and on each topic."""
    auth.check(principal, "group", group_id, "read")
    check_topics(auth, principal, topics, "read")


def check_transactional_id(
    auth: Authorizer, principal: str, transactional_id: str, operation: str = "write"
) -> None:
    """Kafka's TRANSACTIONAL_ID resource: write to use it (InitProducerId, produce in a
    transaction, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn, TxnOffsetCommit)."""
    auth.check(principal, "transactional_id", transactional_id, operation)


def check_txn_partitions(
    auth: Authorizer, principal: str, transactional_id: str, topics: Iterable[str]
) -> None:
    """AddPartitionsToTxn: write on the transactional id and on each topic."""
    check_transactional_id(auth, principal, transactional_id)
    check_topics(auth, principal, topics, "write")


def check_txn_offsets(
    auth: Authorizer, principal: str, transactional_id: str, group_id: str
) -> None:
    """AddOffsetsToTxn: write on the transactional id, read on the group."""
    check_transactional_id(auth, principal, transactional_id)
    auth.check(principal, "group", group_id, "read")


def check_txn_offset_commit(
    auth: Authorizer,
    principal: str,
    transactional_id: str,
    group_id: str,
    topics: Iterable[str],
) -> None:
    """TxnOffsetCommit: write on the transactional id, read on the group and topics."""
    check_transactional_id(auth, principal, transactional_id)
    check_offset_commit(auth, principal, group_id, topics)


def check_produce(
    auth: Authorizer, principal: str, topics: Iterable[str], transactional_id: str | None
) -> None:
    """Write on each topic, and on the transactional id of a transactional producer."""
    if transactional_id is not None:
        check_transactional_id(auth, principal, transactional_id)
    check_topics(auth, principal, topics, "write")


# -- which permission each ZeroMQ op needs (its header's fields, to the checks above) -------

Check = Callable[[Authorizer, str, dict[str, Any]], None]


def _array(header: dict[str, Any], field: str) -> list[Any]:
    """The field as an array (the check runs before the handler has typed the request)."""
    value = header.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequestError(f"field {field!r} must be an array")
    return value


def _topics_of(header: dict[str, Any], field: str = "partitions") -> set[str]:
    out = set()
    for entry in _array(header, field):
        if isinstance(entry, dict) and isinstance(entry.get("topic"), str):
            out.add(entry["topic"])
        elif isinstance(entry, list) and entry and isinstance(entry[0], str):
            out.add(entry[0])
    return out


def _name(header: dict[str, Any], field: str) -> str:
    name = header.get(field)
    return name if isinstance(name, str) else ""


def _each_topic(operation: str, field: str = "partitions") -> Check:
    def check(auth: Authorizer, principal: str, header: dict[str, Any]) -> None:
        check_topics(auth, principal, _topics_of(header, field), operation)

    return check


def _named_topic(operation: str) -> Check:
    def check(auth: Authorizer, principal: str, header: dict[str, Any]) -> None:
        check_topics(auth, principal, [_name(header, "name")], operation)

    return check


def _cluster(operation: str) -> Check:
    def check(auth: Authorizer, principal: str, header: dict[str, Any]) -> None:
        check_cluster(auth, principal, operation)

    return check


def _internal(auth: Authorizer, principal: str, header: dict[str, Any]) -> None:
    check_internal(auth, principal)


def _super_user(what: str) -> Check:
    def check(auth: Authorizer, principal: str, header: dict[str, Any]) -> None:
        check_super_user(auth, principal, what)

    return check


def _anyone(auth: Authorizer, principal: str, header: dict[str, Any]) -> None:
    """Any authenticated principal (the answer is filtered per permission)."""


def _fetch(auth: Authorizer, principal: str, header: dict[str, Any]) -> None:
    if header.get("replica_id", -1) != -1:
        check_internal(auth, principal)
    else:
        _each_topic("read")(auth, principal, header)


def _create_topic(auth: Authorizer, principal: str, header: dict[str, Any]) -> None:
    check_create_topic(auth, principal, _name(header, "name"))


def _init_producer_id(auth: Authorizer, principal: str, header: dict[str, Any]) -> None:
    tid = header.get("transactional_id")
    if tid is not None:
        check_transactional_id(auth, principal, tid if isinstance(tid, str) else "")
    else:
        check_init_producer_id(auth, principal)


def _produce(auth: Authorizer, principal: str, header: dict[str, Any]) -> None:
    tid = header.get("transactional_id")
    check_produce(
        auth,
        principal,
        _topics_of(header),
        None if tid is None else tid if isinstance(tid, str) else "",
    )


def _pair_topics(header: dict[str, Any], field: str) -> set[str]:
    """Topics of a field of [topic, partition] pairs."""
    return {
        e[0] for e in _array(header, field) if isinstance(e, list) and e and isinstance(e[0], str)
    }


def _add_partitions_to_txn(auth: Authorizer, principal: str, header: dict[str, Any]) -> None:
    check_txn_partitions(
        auth, principal, _name(header, "transactional_id"), _pair_topics(header, "partitions")
    )


def _add_offsets_to_txn(auth: Authorizer, principal: str, header: dict[str, Any]) -> None:
    check_txn_offsets(auth, principal, _name(header, "transactional_id"), _name(header, "group_id"))


def _end_txn(auth: Authorizer, principal: str, header: dict[str, Any]) -> None:
    check_transactional_id(auth, principal, _name(header, "transactional_id"))


def _txn_offset_commit(auth: Authorizer, principal: str, header: dict[str, Any]) -> None:
    check_txn_offset_commit(
        auth,
        principal,
        _name(header, "transactional_id"),
        _name(header, "group_id"),
        _topics_of(header, "offsets"),
    )


def _group_op(operation: str) -> Check:
    def check(auth: Authorizer, principal: str, header: dict[str, Any]) -> None:
        check_groups(auth, principal, [_name(header, "group_id")], operation)

    return check


def _offset_commit(auth: Authorizer, principal: str, header: dict[str, Any]) -> None:
    check_offset_commit(auth, principal, _name(header, "group_id"), _topics_of(header, "offsets"))


def _groups_list(operation: str) -> Check:
    def check(auth: Authorizer, principal: str, header: dict[str, Any]) -> None:
        ids = [g if isinstance(g, str) else "" for g in _array(header, "group_ids")]
        check_groups(auth, principal, ids, operation)

    return check


OP_PERMISSIONS: dict[str, Check] = {
    # nodes
    "produce": _produce,
    "write_txn_markers": _internal,
    "fetch": _fetch,
    "list_offsets": _each_topic("describe"),
    "ping": _anyone,
    # broker (and the coordinator, which checks again when called directly)
    "metadata": _anyone,  # topics the principal may not describe are left out
    "find_coordinator": _anyone,
    "create_topic": _create_topic,
    "delete_topic": _named_topic("delete"),
    "create_partitions": _named_topic("alter"),
    "alter_topic_config": _named_topic("alter"),
    "init_producer_id": _init_producer_id,
    "elect_leaders": _cluster("alter"),
    "list_groups": _cluster("describe"),
    "describe_groups": _groups_list("describe"),
    "delete_groups": _groups_list("delete"),
    "acl_add": _cluster("alter"),
    "acl_remove": _cluster("alter"),
    "acl_list": _cluster("describe"),
    "reload_security": _cluster("alter"),
    "user_upsert": _super_user("manage SCRAM users"),
    "user_remove": _super_user("manage SCRAM users"),
    "user_list": _super_user("list SCRAM users"),
    # groups
    "join_group": _group_op("read"),
    "sync_group": _group_op("read"),
    "heartbeat": _group_op("read"),
    "leave_group": _group_op("read"),
    "offset_commit": _offset_commit,
    "offset_fetch": _group_op("describe"),
    # transactions
    "add_partitions_to_txn": _add_partitions_to_txn,
    "add_offsets_to_txn": _add_offsets_to_txn,
    "end_txn": _end_txn,
    "txn_offset_commit": _txn_offset_commit,
    # kvlog's own processes
    "node_heartbeat": _internal,
    "watch_metadata": _internal,
    "alter_isr": _internal,
    "node_down": _internal,
    "kafka_relay": _internal,  # the relayed request is checked as its client's, inside
}


def authorize(auth: Authorizer, principal: str, op: str, header: dict[str, Any]) -> None:
    """Raise the named authorization error unless ``principal`` may run ``op``."""
    check = OP_PERMISSIONS.get(op)
    if check is None:
        _internal(auth, principal, header)  # unknown ops: only kvlog itself (then unknown)
        return
    check(auth, principal, header)


def acting_principal(principal: str, header: dict[str, Any]) -> str:
    """Who a request is checked as: its connection's principal, or the ``as_principal``
    field that only kvlog's own processes may send (the web console acting for the user
    who logged in to it; PROTOCOL.md 1.4). Anyone else's field is refused, never ignored."""
    acting = header.get("as_principal")
    if acting is None:
        return principal
    if principal != INTERNAL_PRINCIPAL:
        raise ClusterAuthorizationFailedError(
            f"principal {principal!r} may not send as_principal (kvlog's own processes only)"
        )
    if not isinstance(acting, str) or not 0 < len(acting) <= 1024 or acting in RESERVED_PRINCIPALS:
        raise InvalidRequestError(
            "as_principal must be a principal's name (1-1024 characters, not "
            f"{', '.join(sorted(RESERVED_PRINCIPALS))})"
        )
    return acting
