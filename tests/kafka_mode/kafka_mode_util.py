"""What the Kafka-mode tests share."""

from __future__ import annotations

from typing import Any


class KafkaView:
    """A running broker seen by Kafka-mode clients: ``bootstrap`` is ``kafka://`` its
    Kafka listener; everything else is the broker's. Owned by the module's fixture."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        assert broker.kafka_bootstrap, "the broker's Kafka listener is off"
        self.bootstrap = "kafka://" + broker.kafka_bootstrap

    def __getattr__(self, name: str) -> Any:
        return getattr(self.broker, name)
