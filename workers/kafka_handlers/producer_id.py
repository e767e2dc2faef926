"""InitProducerId (v0-1): a producer id for an idempotent producer, from the controller
(:mod:`workers.controller_core`), durable so ids are never reused. A transactional id is
refused (UNSUPPORTED_VERSION) by the core until kvlog has transactions.
"""

from __future__ import annotations

from typing import Any

from kvlog.ipc.kafka.codec import ApiKey, response_class
from kvlog.ipc.kafka.connection import KafkaRequest

from ..controller_events import InitProducerId
from .base import KafkaContext, Outcome, Plan, handles

_Response = response_class(ApiKey.InitProducerId)


@handles(ApiKey.InitProducerId)
def init_producer_id(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    return Plan([InitProducerId(request.body.transactional_id)], _respond)


def _respond(outcomes: list[Outcome]) -> Any:
    [outcome] = outcomes
    if outcome.error is not None:
        return _Response(
            throttle_time_ms=0, error_code=outcome.code, producer_id=-1, producer_epoch=-1
        )
    answer = outcome.body
    return _Response(
        throttle_time_ms=0,
        error_code=0,
        producer_id=answer.producer_id,
        producer_epoch=answer.producer_epoch,
    )
