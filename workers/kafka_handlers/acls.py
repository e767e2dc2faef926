"""Kafka's ACL APIs: DescribeAcls (v0-1), CreateAcls (v0-1), DeleteAcls (v0-1), over the
ACL store ``kvlog acls`` manages (the controller's AclList, AclAdd and AclRemove), with
the ZeroMQ ops' permissions (describe: cluster describe; create, delete: cluster alter)
and, with security off, SECURITY_DISABLED as Kafka answers without an authorizer.

kvlog's ACLs are a subset of Kafka's, and the translation is exact where they meet:

- principal ``User:NAME`` is kvlog's principal NAME (``User:*`` is ``*``); other
  principal types are refused;
- resource types TOPIC, GROUP and CLUSTER (Kafka's cluster is named ``kafka-cluster``,
  kvlog's ``kvlog``: either is accepted, ``kafka-cluster`` is shown);
- operations READ, WRITE, CREATE, DELETE, DESCRIBE, ALTER (one each; not ALL or the
  config/idempotence ones, which kvlog's checks do not use);
- pattern type LITERAL, where the name ``*`` matches every resource, as in Kafka;
  PREFIXED is refused (kvlog's store has no prefixes);
- permission ALLOW (everything not allowed is denied: DENY is refused), host ``*``.

A filter (DescribeAcls, DeleteAcls) may use ANY, MATCH and null names as Kafka's does;
what it could only match outside that subset (a PREFIXED pattern, a DENY permission, a
host other than ``*``) matches nothing. A refused creation or filter gets INVALID_REQUEST
with a message that says what kvlog supports.

Processes without the store (the broker; nodes) forward the same events to the
coordinator: :func:`forward_op` and :func:`forwarded_answer` are that translation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvlog.errors import InvalidRequestError, KvlogError
from kvlog.ipc.kafka.codec import ApiKey, response_class
from kvlog.ipc.kafka.connection import KafkaRequest

from ..acl import CLUSTER_NAME, AclEntry
from ..controller_events import AclAdd, AclAdded, AclList, AclListing, AclRemove, AclsRemoved
from .base import KafkaContext, Outcome, Plan, handles

# Kafka's numbers (org.apache.kafka.common.resource / acl).
ANY, MATCH, LITERAL, PREFIXED = 1, 2, 3, 4  # pattern types (ANY is 1 in every enum)
RESOURCE_TYPES = {2: "topic", 3: "group", 4: "cluster"}
OPERATIONS = {3: "read", 4: "write", 5: "create", 6: "delete", 7: "alter", 8: "describe"}
DENY, ALLOW = 2, 3
KAFKA_CLUSTER = "kafka-cluster"
USER = "User:"

_TYPE_CODES = {name: code for code, name in RESOURCE_TYPES.items()}
_OPERATION_CODES = {name: code for code, name in OPERATIONS.items()}
_Describe = response_class(ApiKey.DescribeAcls)
_Resource = _Describe.DescribeAclsResource
_Acl = _Resource.AclDescription
_Create = response_class(ApiKey.CreateAcls)
_Delete = response_class(ApiKey.DeleteAcls)
_FilterResult = _Delete.DeleteAclsFilterResult
_Matching = _FilterResult.DeleteAclsMatchingAcl


def _refused(what: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{what}: kvlog ACLs allow (no DENY) one operation (READ, WRITE, CREATE, DELETE, "
        "DESCRIBE, ALTER) on a TOPIC, GROUP or the CLUSTER, by LITERAL name ('*': any), to "
        "a principal User:NAME from host '*'"
    )


# -- Kafka's fields <-> kvlog's ------------------------------------------------------------


def kvlog_principal(principal: str | None) -> str:
    if not principal or not principal.startswith(USER) or len(principal) == len(USER):
        raise _refused(f"principal {principal!r} (give User:NAME)")
    return principal[len(USER) :]


def kvlog_name(resource_type: str, name: str | None) -> str:
    if not name:
        raise _refused("an empty resource name")
    if resource_type == "cluster":
        if name not in (KAFKA_CLUSTER, CLUSTER_NAME):
            raise _refused(f"cluster name {name!r} (the cluster is {KAFKA_CLUSTER!r})")
        return CLUSTER_NAME
    return name


def kafka_name(entry: AclEntry) -> str:
    return KAFKA_CLUSTER if entry.resource_type == "cluster" else entry.name


def acl_entry(creation: Any, version: int) -> AclEntry:
    """The kvlog ACL a CreateAcls creation asks for; raises InvalidRequestError."""
    pattern = creation.resource_pattern_type if version >= 1 else LITERAL
    resource_type = RESOURCE_TYPES.get(creation.resource_type)
    operation = OPERATIONS.get(creation.operation)
    if resource_type is None:
        raise _refused(f"resource type {creation.resource_type}")
    if operation is None:
        raise _refused(f"operation {creation.operation}")
    if pattern != LITERAL:
        raise _refused(f"pattern type {pattern} (PREFIXED names are not supported)")
    if creation.permission_type != ALLOW:
        raise _refused(
            f"permission type {creation.permission_type} (everything not allowed is denied already)"
        )
    if creation.host != "*":
        raise _refused(f"host {creation.host!r}")
    return AclEntry(
        kvlog_principal(creation.principal),
        resource_type,
        kvlog_name(resource_type, creation.resource_name),
        operation,
    )


@dataclass(frozen=True, slots=True)
class AclFilter:
    """A DescribeAcls/DeleteAcls filter in kvlog's terms: for each resource type it can
    match, the names it matches there (None: any); principal and operation None match
    any. No resource types: a filter kvlog's ACLs can never match (PREFIXED, DENY,
    another host or principal type)."""

    resources: tuple[tuple[str, tuple[str, ...] | None], ...]
    principal: str | None
    operation: str | None

    def matches(self, entry: AclEntry) -> bool:
        return (
            any(
                entry.resource_type == kind and (names is None or entry.name in names)
                for kind, names in self.resources
            )
            and (self.principal is None or entry.principal == self.principal)
            and (self.operation is None or entry.operation == self.operation)
        )

    def removals(self) -> list[AclRemove]:
        """The AclRemove events that delete exactly what this filter matches."""
        return [
            AclRemove(self.principal, kind, name, self.operation)
            for kind, names in self.resources
            for name in (names if names is not None else (None,))
        ]


def acl_filter(f: Any, version: int) -> AclFilter:
    """A kvlog filter from Kafka's filter fields; raises InvalidRequestError for values
    Kafka itself rejects (UNKNOWN, numbers out of range)."""
    type_code = f.resource_type_filter
    if type_code == ANY:
        kinds = list(RESOURCE_TYPES.values())
    elif type_code in RESOURCE_TYPES:
        kinds = [RESOURCE_TYPES[type_code]]
    elif type_code in (5, 6, 7):  # TRANSACTIONAL_ID, DELEGATION_TOKEN, USER: no kvlog ACLs
        kinds = []
    else:
        raise InvalidRequestError(f"ACL filter: resource type {type_code} is not a filter")
    pattern = getattr(f, "pattern_type_filter", LITERAL) if version >= 1 else LITERAL
    if pattern not in (ANY, MATCH, LITERAL, PREFIXED):
        raise InvalidRequestError(f"ACL filter: pattern type {pattern} is not a filter")
    if not 1 <= f.operation <= 14:
        raise InvalidRequestError(f"ACL filter: operation {f.operation} is not a filter")
    if f.permission_type not in (ANY, DENY, ALLOW):
        raise InvalidRequestError(
            f"ACL filter: permission type {f.permission_type} is not a filter"
        )
    principal = None
    if f.principal_filter is not None:
        if f.principal_filter.startswith(USER) and len(f.principal_filter) > len(USER):
            principal = f.principal_filter[len(USER) :]
        else:
            kinds = []  # another principal type: kvlog has none
    if (
        pattern == PREFIXED
        or f.permission_type == DENY
        or (f.operation != ANY and f.operation not in OPERATIONS)
        or (f.host_filter is not None and f.host_filter != "*")
    ):
        kinds = []
    name = f.resource_name_filter
    resources: list[tuple[str, tuple[str, ...] | None]] = []
    for kind in kinds:
        if name is None:
            resources.append((kind, None))
            continue
        exact = name
        if kind == "cluster":
            if name not in (KAFKA_CLUSTER, CLUSTER_NAME, "*"):
                continue  # the one cluster has another name
            exact = CLUSTER_NAME if name != "*" else "*"
        names = (exact, "*") if pattern == MATCH and exact != "*" else (exact,)
        resources.append((kind, names))
    return AclFilter(tuple(resources), principal, OPERATIONS.get(f.operation))


def acl_description(entry: AclEntry) -> Any:
    return _Acl(
        principal=USER + entry.principal,
        host="*",
        operation=_OPERATION_CODES[entry.operation],
        permission_type=ALLOW,
    )


# -- the handlers ---------------------------------------------------------------------------


@handles(ApiKey.DescribeAcls)
def describe_acls(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    try:
        wanted = acl_filter(request.body, request.api_version)
    except InvalidRequestError as exc:
        return Plan([Outcome(error=exc)], _describe_response)
    return Plan([AclList()], lambda outcomes: _describe_response(outcomes, wanted))


def _describe_response(outcomes: list[Outcome], wanted: AclFilter | None = None) -> Any:
    [outcome] = outcomes
    if outcome.error is not None or wanted is None:
        return _Describe(
            throttle_time_ms=0, error_code=outcome.code, error_message=outcome.message, resources=[]
        )
    listing: AclListing = outcome.body
    resources: dict[tuple[str, str], list[Any]] = {}
    for entry in listing.acls:
        if wanted.matches(entry):
            key = (entry.resource_type, kafka_name(entry))
            resources.setdefault(key, []).append(acl_description(entry))
    return _Describe(
        throttle_time_ms=0,
        error_code=0,
        error_message=None,
        resources=[
            _Resource(
                resource_type=_TYPE_CODES[resource_type],
                resource_name=name,
                pattern_type=LITERAL,
                acls=acls,
            )
            for (resource_type, name), acls in sorted(resources.items())
        ],
    )


@handles(ApiKey.CreateAcls)
def create_acls(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    steps: list[Any] = []
    for creation in request.body.creations or ():
        try:
            steps.append(AclAdd(acl_entry(creation, request.api_version)))
        except KvlogError as exc:
            steps.append(Outcome(error=exc))

    def respond(outcomes: list[Outcome]) -> Any:
        return _Create(
            throttle_time_ms=0,
            results=[
                _Create.AclCreationResult(error_code=o.code, error_message=o.message)
                for o in outcomes
            ],
        )

    return Plan(steps, respond)


@handles(ApiKey.DeleteAcls)
def delete_acls(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    steps: list[Any] = []
    spans: list[tuple[int, int, KvlogError | None]] = []  # each filter's steps
    for f in request.body.filters or ():
        start = len(steps)
        try:
            wanted = acl_filter(f, request.api_version)
        except InvalidRequestError as exc:
            spans.append((start, start, exc))
            continue
        steps.extend(wanted.removals())
        spans.append((start, len(steps), None))

    def respond(outcomes: list[Outcome]) -> Any:
        results = []
        for start, end, refused in spans:
            mine = outcomes[start:end]
            error = refused or next((o.error for o in mine if o.error is not None), None)
            removed = [] if error else [e for o in mine for e in o.body.removed]
            results.append(
                _FilterResult(
                    error_code=0 if error is None else int(error.code),
                    error_message=None if error is None else error.message,
                    matching_acls=[_matching(e) for e in sorted(set(removed))],
                )
            )
        return _Delete(throttle_time_ms=0, filter_results=results)

    return Plan(steps, respond)


def _matching(entry: AclEntry) -> Any:
    return _Matching(
        error_code=0,
        error_message=None,
        resource_type=_TYPE_CODES[entry.resource_type],
        resource_name=kafka_name(entry),
        pattern_type=LITERAL,
        principal=USER + entry.principal,
        host="*",
        operation=_OPERATION_CODES[entry.operation],
        permission_type=ALLOW,
    )


# -- forwarding (processes without the ACL store) -------------------------------------------

ACL_EVENTS = (AclAdd, AclRemove, AclList)


def forward_op(event: AclAdd | AclRemove | AclList) -> tuple[str, dict[str, Any]]:
    """The ZeroMQ op (PROTOCOL.md) that asks the coordinator for ``event``."""
    if isinstance(event, AclAdd):
        return "acl_add", event.entry.as_dict()
    if isinstance(event, AclRemove):
        fields = {
            "principal": event.principal,
            "resource_type": event.resource_type,
            "name": event.name,
            "operation": event.operation,
        }
        return "acl_remove", {k: v for k, v in fields.items() if v is not None}
    return "acl_list", {}


def forwarded_answer(event: Any, fields: dict[str, Any]) -> Any:
    """The coordinator's reply fields to :func:`forward_op`'s op, as the core's answer."""
    decode: dict[type, Callable[[dict[str, Any]], Any]] = {
        AclAdd: lambda f: AclAdded(bool(f.get("added"))),
        AclRemove: lambda f: AclsRemoved([AclEntry(**e) for e in f.get("removed", [])]),
        AclList: lambda f: AclListing([AclEntry(**e) for e in f.get("acls", [])]),
    }
    return decode[type(event)](fields)
