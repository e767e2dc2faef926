"""Configs: DescribeConfigs (v1-3), AlterConfigs (v0-1), IncrementalAlterConfigs (v0-1).

Topics: a topic's config is its overrides over the topic config table
(:data:`kvlog.topic_config.TOPIC_CONFIG`); DescribeConfigs reads them from the metadata
answer (the controller's state, or the broker's cache), each key with its source
(DYNAMIC_TOPIC_CONFIG for an override, DEFAULT_CONFIG otherwise) and, when asked, its
synonyms and documentation. AlterConfigs replaces a topic's overrides; the incremental
form sets (0) and deletes (1) single keys; both are the controller's AlterTopicConfig,
with ``validate_only`` honoured. kvlog's topic configs hold no lists, so APPEND (2) and
SUBTRACT (3) are INVALID_CONFIG.

Brokers: one config table serves the whole kvlog instance; DescribeConfigs of any broker
shows the keys the answering process runs with (STATIC_BROKER_CONFIG when set, else
DEFAULT_CONFIG). They are static: altering one is INVALID_CONFIG (set it in
``kvlog serve --config``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kvlog.errors import (
    ClusterAuthorizationFailedError,
    InvalidConfigError,
    InvalidRequestError,
    KvlogError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from kvlog.ipc.kafka.codec import ApiKey, response_class
from kvlog.ipc.kafka.connection import KafkaRequest
from kvlog.topic_config import TOPIC_CONFIG

from ..controller_events import AlterTopicConfig, Metadata, MetadataAnswer, TopicEntry
from .base import KafkaContext, Outcome, Plan, handles

TOPIC = 2
BROKER = 4
# Kafka's ConfigSource and ConfigType numbers.
DYNAMIC_TOPIC_CONFIG = 1
STATIC_BROKER_CONFIG = 4
DEFAULT_CONFIG = 5
_CONFIG_TYPES = {"boolean": 1, "string": 2, "int": 3, "list": 7}
SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3

_Describe = response_class(ApiKey.DescribeConfigs)
_Result = _Describe.DescribeConfigsResult
_Entry = _Result.DescribeConfigsResourceResult
_Synonym = _Entry.DescribeConfigsSynonym
_Alter = response_class(ApiKey.AlterConfigs)
_Incremental = response_class(ApiKey.IncrementalAlterConfigs)


def config_string(value: Any) -> str | None:
    """A config value as Kafka's wire carries it."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


# -- DescribeConfigs ----------------------------------------------------------------------


@handles(ApiKey.DescribeConfigs)
def describe_configs(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body = request.body
    resources = list(body.resources or ())
    synonyms = bool(body.include_synonyms)
    docs = request.api_version >= 3 and bool(body.include_documentation)
    steps: list[Any] = []
    for r in resources:
        if r.resource_type == TOPIC:
            if not ctx.may("topic", r.resource_name, "describe"):
                steps.append(Outcome(error=_topic_denied(ctx, r.resource_name)))
            else:
                steps.append(Metadata([r.resource_name]))
        elif r.resource_type == BROKER:
            steps.append(Outcome(error=_broker_error(ctx, r.resource_name, "describe")))
        else:
            steps.append(Outcome(error=_unknown_type(r.resource_type)))

    def respond(outcomes: list[Outcome]) -> Any:
        results = []
        for r, outcome in zip(resources, outcomes, strict=True):
            keys = None if r.configuration_keys is None else set(r.configuration_keys)
            try:
                if outcome.error is not None:
                    raise outcome.error
                if r.resource_type == TOPIC:
                    entries = _topic_entries(outcome.body, r.resource_name, keys, synonyms, docs)
                else:
                    entries = _broker_entries(ctx, keys, synonyms)
            except KvlogError as exc:
                results.append(_result(r, int(exc.code), exc.message, []))
                continue
            results.append(_result(r, 0, None, entries))
        return _Describe(throttle_time_ms=0, results=results)

    return Plan(steps, respond)


def _result(resource: Any, code: int, message: str | None, entries: list[Any]) -> Any:
    return _Result(
        error_code=code,
        error_message=message,
        resource_type=resource.resource_type,
        resource_name=resource.resource_name,
        configs=entries,
    )


def _topic_entries(
    answer: MetadataAnswer, name: str, keys: set[str] | None, synonyms: bool, docs: bool
) -> list[Any]:
    found = [t for t in answer.topics if isinstance(t, TopicEntry) and t.name == name]
    if not found:
        raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
    overrides = found[0].config
    out = []
    for key in TOPIC_CONFIG.values():
        if keys is not None and key.name not in keys:
            continue
        default = config_string(key.default)
        chain = []
        if key.name in overrides:
            chain.append((config_string(overrides[key.name]), DYNAMIC_TOPIC_CONFIG))
        chain.append((default, DEFAULT_CONFIG))
        value, source = chain[0]
        out.append(
            _Entry(
                name=key.name,
                value=value,
                read_only=False,
                config_source=source,
                is_default=source == DEFAULT_CONFIG,
                is_sensitive=False,
                synonyms=[_Synonym(name=key.name, value=v, source=s) for v, s in chain]
                if synonyms
                else [],
                config_type=_CONFIG_TYPES.get(key.type.name, 0),
                documentation=key.doc if docs else None,
            )
        )
    return out


def _broker_entries(ctx: KafkaContext, keys: set[str] | None, synonyms: bool) -> list[Any]:
    out = []
    for entry in ctx.broker_config.values():
        if keys is not None and entry.name not in keys:
            continue
        source = DEFAULT_CONFIG if entry.default else STATIC_BROKER_CONFIG
        out.append(
            _Entry(
                name=entry.name,
                value=None if entry.sensitive else entry.value,
                read_only=True,
                config_source=source,
                is_default=entry.default,
                is_sensitive=entry.sensitive,
                synonyms=[_Synonym(name=entry.name, value=entry.value, source=source)]
                if synonyms
                else [],
            )
        )
    return out


def _broker_error(ctx: KafkaContext, name: str, operation: str) -> KvlogError | None:
    """Why a broker resource cannot be described (None: it can)."""
    if name and not name.lstrip("-").isdigit():
        return InvalidRequestError(f"broker resource name {name!r} is not a broker id")
    if not ctx.may("cluster", "kvlog", operation):
        return ClusterAuthorizationFailedError(
            f"principal {ctx.principal!r} may not {operation} the cluster's configs"
        )
    return None


def _topic_denied(ctx: KafkaContext, name: str) -> KvlogError:
    return TopicAuthorizationFailedError(
        f"principal {ctx.principal!r} may not describe topic {name!r}"
    )


def _unknown_type(resource_type: int) -> KvlogError:
    return InvalidRequestError(
        f"config resource type {resource_type}: kvlog has topic (2) and broker (4) configs"
    )


# -- AlterConfigs and IncrementalAlterConfigs ---------------------------------------------


def _static_broker() -> KvlogError:
    return InvalidConfigError(
        "broker configs are static in kvlog: set them in kvlog serve --config (or "
        "kvlog.Broker(config=...)) and restart"
    )


def _alter_steps(resources: Iterable[Any], validate_only: bool, changes_of: Any) -> list[Any]:
    steps: list[Any] = []
    for r in resources:
        if r.resource_type == TOPIC:
            try:
                changes, replace = changes_of(r)
            except KvlogError as exc:
                steps.append(Outcome(error=exc))
                continue
            steps.append(
                AlterTopicConfig(
                    r.resource_name, changes, validate_only=validate_only, replace=replace
                )
            )
        elif r.resource_type == BROKER:
            steps.append(Outcome(error=_static_broker()))
        else:
            steps.append(Outcome(error=_unknown_type(r.resource_type)))
    return steps


def _alter_respond(response_cls: Any, resources: list[Any]) -> Any:
    def respond(outcomes: list[Outcome]) -> Any:
        return response_cls(
            throttle_time_ms=0,
            responses=[
                response_cls.AlterConfigsResourceResponse(
                    error_code=o.code,
                    error_message=o.message,
                    resource_type=r.resource_type,
                    resource_name=r.resource_name,
                )
                for r, o in zip(resources, outcomes, strict=True)
            ],
        )

    return respond


@handles(ApiKey.AlterConfigs)
def alter_configs(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body = request.body
    resources = list(body.resources or ())

    def changes_of(r: Any) -> tuple[dict[str, Any], bool]:
        return {c.name: c.value for c in r.configs or ()}, True

    steps = _alter_steps(resources, bool(body.validate_only), changes_of)
    return Plan(steps, _alter_respond(_Alter, resources))


@handles(ApiKey.IncrementalAlterConfigs)
def incremental_alter_configs(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body = request.body
    resources = list(body.resources or ())

    def changes_of(r: Any) -> tuple[dict[str, Any], bool]:
        changes: dict[str, Any] = {}
        for c in r.configs or ():
            if c.config_operation == SET:
                changes[c.name] = c.value
            elif c.config_operation == DELETE:
                changes[c.name] = None
            elif c.config_operation in (APPEND, SUBTRACT):
                raise InvalidConfigError(
                    f"{c.name}: APPEND and SUBTRACT are for list configs; kvlog's topic "
                    "configs hold single values (use SET)"
                )
            else:
                raise InvalidRequestError(
                    f"{c.name}: unknown config operation {c.config_operation}"
                )
        return changes, False

    steps = _alter_steps(resources, bool(body.validate_only), changes_of)
    return Plan(steps, _alter_respond(_Incremental, resources))
