"""What every Kafka handler is: a decoded request in, a plan out; outcomes in, a response out.

Shell side, process-independent. A handler (one module per Kafka API or family, each
registered under its API key with :func:`handles`; the versions it serves are its line in
``kvlog.ipc.kafka.versions.SERVED``) turns one decoded Kafka request into a
:class:`Plan`: the core events that decide its answer (``steps``), in order, and how to
build the Kafka response from their outcomes (``respond``). A step may also be an
:class:`Outcome` the handler decided without a core (a malformed entry, an unsupported
version's error), so a response with one entry per topic or group keeps its order. The
shell (:mod:`workers.kafka_shell`) checks each event against the ACLs, hands it to its
core, gathers the outcomes (some cores answer later: an admin change once the nodes
applied it, a JoinGroup once the rebalance completes) and sends ``respond(outcomes)``.
Handlers decide nothing a core decides: they translate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvlog.errors import KvlogError
from kvlog.ipc.kafka.connection import KafkaRequest

from ..acl import ANONYMOUS, Authorizer


@dataclass(slots=True)
class Outcome:
    """A step's answer: the core's typed ``body``, or ``error``."""

    body: Any = None
    error: KvlogError | None = None

    @property
    def code(self) -> int:
        return 0 if self.error is None else int(self.error.code)

    @property
    def message(self) -> str | None:
        return None if self.error is None else self.error.message


def error_code(error: KvlogError | None) -> int:
    return 0 if error is None else int(error.code)


@dataclass(slots=True)
class Plan:
    """What one Kafka request needs: core events (or outcomes decided already), then the
    response built from their outcomes, in the same order."""

    steps: list[Any]
    respond: Callable[[list[Outcome]], Any]


@dataclass(frozen=True, slots=True)
class BrokerConfigEntry:
    """One broker config key as DescribeConfigs shows it (``default``: the value is the
    table's default, not set by the operator)."""

    name: str
    value: str | None
    default: bool
    sensitive: bool = False


@dataclass(frozen=True, slots=True)
class KafkaContext:
    """Who sent a request and which process answers it. ``authorizer`` None: security off
    (everything allowed). Owned by the shell; immutable."""

    broker_id: int
    principal: str = ANONYMOUS
    client_host: str = ""
    authorizer: Authorizer | None = None
    broker_config: Mapping[str, BrokerConfigEntry] = field(default_factory=dict)

    def may(self, resource_type: str, name: str, operation: str) -> bool:
        return self.authorizer is None or self.authorizer.allowed(
            self.principal, resource_type, name, operation
        )


Handler = Callable[[KafkaRequest, KafkaContext], Plan]

HANDLERS: dict[int, Handler] = {}


def handles(api_key: int) -> Callable[[Handler], Handler]:
    """Register a handler under its API key (one per key)."""

    def register(handler: Handler) -> Handler:
        if api_key in HANDLERS:
            raise ValueError(f"API key {api_key} has a handler already")
        HANDLERS[api_key] = handler
        return handler

    return register
