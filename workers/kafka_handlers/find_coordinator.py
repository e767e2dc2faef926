"""FindCoordinator (v0-2): every group's and transactional id's coordinator is the
coordinator process.

Key type 0 (groups) and key type 1 (transactional ids) are both answered with the
coordinator's broker id and Kafka address: the coordinator process is every group's and
every transactional id's coordinator (the rule is
:func:`workers.controller_events.find_coordinator`, shared with the ZeroMQ wire). A
coordinator without a Kafka listener is COORDINATOR_NOT_AVAILABLE.
"""

from __future__ import annotations

from typing import Any

from kvlog.errors import ErrorCode
from kvlog.ipc.kafka.codec import ApiKey, response_class
from kvlog.ipc.kafka.connection import KafkaRequest

from ..controller_events import FindCoordinator, FindCoordinatorAnswer
from .base import KafkaContext, Outcome, Plan, handles
from .metadata import split_host_port

_Response = response_class(ApiKey.FindCoordinator)


@handles(ApiKey.FindCoordinator)
def find_coordinator(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body = request.body
    key_type = body.key_type if request.api_version >= 1 else 0
    return Plan([FindCoordinator(body.key or "", key_type)], _respond)


def _respond(outcomes: list[Outcome]) -> Any:
    [outcome] = outcomes
    answer = outcome.body
    if outcome.error is None and not (
        isinstance(answer, FindCoordinatorAnswer) and answer.kafka_endpoint
    ):
        return _failed(
            int(ErrorCode.COORDINATOR_NOT_AVAILABLE),
            "the coordinator has no Kafka listener (or is not known yet); retry",
        )
    if outcome.error is not None:
        return _failed(outcome.code, outcome.message)
    host, port = split_host_port(answer.kafka_endpoint)
    return _Response(
        throttle_time_ms=0,
        error_code=0,
        error_message=None,
        node_id=answer.broker_id,
        host=host,
        port=port,
    )


def _failed(code: int, message: str | None) -> Any:
    return _Response(
        throttle_time_ms=0, error_code=code, error_message=message, node_id=-1, host="", port=-1
    )
