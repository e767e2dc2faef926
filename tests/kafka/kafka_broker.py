"""A kvlog.Broker for the Kafka-wire tests: Kafka listeners on free ports, and the
coordinator's Kafka address beside the bootstrap's."""

from __future__ import annotations

from typing import Any

from kvlog.workers.supervisor import Broker


class KafkaBroker(Broker):
    """A supervisor whose processes listen on Kafka's wire on free ports (127.0.0.1:0):
    ``kafka_bootstrap`` is the broker's address, ``kafka_coordinator`` the coordinator's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("kafka_listen", "127.0.0.1:0")
        super().__init__(*args, **kwargs)

    @property
    def kafka_coordinator(self) -> str:
        assert self.kafka_plan is not None
        return self.kafka_plan.coordinator.advertised
