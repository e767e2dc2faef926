"""A kvlog.Broker whose coordinator and broker processes have Kafka listeners.

Until the supervisor fills ``ServerSettings.kafka_listen`` in for every process, this
subclass gives the coordinator and the broker each a free port on 127.0.0.1 (kept across
restarts: the settings stay with the child). ``kafka_bootstrap`` is the broker's Kafka
address, ``kafka_coordinator`` the coordinator's.
"""

from __future__ import annotations

import socket
from typing import Any

from kvlog.workers.supervisor import Broker, Child


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KafkaBroker(Broker):
    """A supervisor whose coordinator and broker listen on Kafka's wire too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kafka: dict[str, str] = {}

    def _spawn(self, child: Child) -> None:
        server = child.settings.get("server", {})
        if child.role in ("coordinator", "broker") and "kafka_listen" not in server:
            address = f"127.0.0.1:{free_port()}"
            child.settings["server"] = {**server, "kafka_listen": address}
            self.kafka[child.role] = address
        super()._spawn(child)

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka["broker"]

    @property
    def kafka_coordinator(self) -> str:
        return self.kafka["coordinator"]
