"""InitProducerId (v0-4): a producer id for an idempotent producer, from the controller
(:mod:`workers.controller_core`), durable so ids are never reused; or, with a
transactional id, from the transaction coordinator (:mod:`workers.txn_core`), which
bumps the id's epoch (fencing an older instance) and aborts a transaction the older
instance left open (the answer waits for that abort).

From v3 the request carries the producer's current id and epoch (KIP-360): a
transactional producer bumps its own epoch after an abortable error (UNKNOWN_PRODUCER_ID,
a timed-out transaction), allowed only while that id and epoch are the current ones, so a
zombie cannot fence its successor. An idempotent producer's (no transactional id) are
ignored, as Kafka does: it gets a new producer id. v0-3 predate PRODUCER_FENCED:
INVALID_PRODUCER_EPOCH stands for it (:func:`.transactions.kafka_code`).
"""

from __future__ import annotations

from typing import Any

from kvlog.ipc.kafka.codec import ApiKey, response_class
from kvlog.ipc.kafka.connection import KafkaRequest

from ..controller_events import InitProducerId
from .base import KafkaContext, Outcome, Plan, handles
from .transactions import kafka_code

_Response = response_class(ApiKey.InitProducerId)


@handles(ApiKey.InitProducerId)
def init_producer_id(request: KafkaRequest, ctx: KafkaContext) -> Plan:
    body, version = request.body, request.api_version
    event = InitProducerId(body.transactional_id, body.transaction_timeout_ms)
    if version >= 3 and body.transactional_id is not None and body.producer_id >= 0:
        event = InitProducerId(
            body.transactional_id,
            body.transaction_timeout_ms,
            producer_id=body.producer_id,
            producer_epoch=body.producer_epoch,
        )

    def respond(outcomes: list[Outcome]) -> Any:
        [outcome] = outcomes
        if outcome.error is not None:
            code = kafka_code(outcome.error, ApiKey.InitProducerId, version)
            return _Response(throttle_time_ms=0, error_code=code, producer_id=-1, producer_epoch=-1)
        answer = outcome.body
        return _Response(
            throttle_time_ms=0,
            error_code=0,
            producer_id=answer.producer_id,
            producer_epoch=answer.producer_epoch,
        )

    return Plan([event], respond)
