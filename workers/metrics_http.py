"""The supervisor's Prometheus endpoint: every process's metrics in one scrape.

Each process of the broker writes its numbers into prometheus_client's multiprocess
files under ``DATA_DIR/run/metrics`` (workers/metrics.py); this module empties that
directory at start, serves it over HTTP with prometheus_client's own server (a daemon
thread of the supervisor: a scrape never waits on a broker process, only reads files)
and adds what only the supervisor knows or what joins numbers of two processes:

- ``kvlog_process_up`` and ``kvlog_process_restarts_total`` per process;
- ``kvlog_group_lag`` (a group's committed offset, from the coordinator, against the
  partition's high watermark, from the nodes) and ``kvlog_group_lag_sum``.

NaN samples (series a process retired, see workers/metrics.py) are left out.

``metrics_listen``: ``HOST:PORT``, ``auto`` (127.0.0.1:9645, or a free port when the
ZeroMQ listener picks one) or ``none``. :class:`MetricsEndpoint` is owned by the
supervisor; its collector runs on the HTTP thread and only reads the process list
through the callable it was given.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kvlog.errors import InvalidConfigError

from . import ports
from .kafka_addresses import AUTO, OFF, split_host_port

DEFAULT_METRICS_PORT = 9645
DEFAULT_METRICS_LISTEN = f"127.0.0.1:{DEFAULT_METRICS_PORT}"
METRICS_DIR = "metrics"


def parse_metrics_listen(name: str, value: Any) -> str | None:
    """The ``metrics_listen`` setting: ``HOST:PORT``, ``auto``, or ``none`` (-> None)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidConfigError(f"{name} must be HOST:PORT, auto or none, got {value!r}")
    spelled = value.strip()
    if spelled.lower() in OFF:
        return None
    if spelled.lower() == AUTO:
        return AUTO
    split_host_port(name, spelled)
    return spelled


def resolve_auto(metrics_listen: str | None, zmq_listen: str) -> str | None:
    """``auto`` made concrete, as the Kafka listener's: the fixed default port unless
    the ZeroMQ listener picks a free port (tests, embedded brokers), then a free one."""
    if metrics_listen != AUTO:
        return metrics_listen
    if zmq_listen.startswith("tcp://") and not zmq_listen.endswith(":0"):
        return DEFAULT_METRICS_LISTEN
    return "127.0.0.1:0"


def _label_key(labels: dict[str, str], names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(labels.get(n, "") for n in names)


class BrokerCollector:
    """prometheus_client collector over the multiprocess files plus the supervisor's own
    numbers. ``processes`` returns (role, node id or None, alive, restarts) per process."""

    def __init__(
        self, directory: Path, processes: Callable[[], list[tuple[str, Any, bool, int]]]
    ) -> None:
        self.directory = directory
        self.processes = processes

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.multiprocess import MultiProcessCollector

        high: dict[tuple[str, str], float] = {}
        committed: dict[tuple[str, str, str], float] = {}
        for family in MultiProcessCollector(None, path=str(self.directory)).collect():
            family.samples = [s for s in family.samples if not math.isnan(s.value)]
            if not family.samples:
                continue
            if family.name == "kvlog_high_watermark":
                for s in family.samples:
                    key = _label_key(s.labels, ("topic", "partition"))
                    high[key] = max(high.get(key, 0.0), s.value)  # the leader's is highest
            elif family.name == "kvlog_group_committed_offset":
                for s in family.samples:
                    committed[_label_key(s.labels, ("group", "topic", "partition"))] = s.value
            yield family
        lag = GaugeMetricFamily(
            "kvlog_group_lag",
            "high watermark minus the group's committed offset",
            labels=["group", "topic", "partition"],
        )
        lag_sum = GaugeMetricFamily(
            "kvlog_group_lag_sum", "a group's lag over its partitions", labels=["group"]
        )
        sums: dict[str, float] = {}
        for (group, topic, partition), offset in sorted(committed.items()):
            hw = high.get((topic, partition))
            if hw is None:
                continue  # the topic is gone, or no node reported it yet
            behind = max(0.0, hw - offset)
            lag.add_metric([group, topic, partition], behind)
            sums[group] = sums.get(group, 0.0) + behind
        for group, total in sums.items():
            lag_sum.add_metric([group], total)
        yield lag
        yield lag_sum
        up = GaugeMetricFamily("kvlog_process_up", "1 while alive", labels=["role", "node"])
        restarts = CounterMetricFamily(
            "kvlog_process_restarts", "restarts by the supervisor", labels=["role", "node"]
        )
        for role, node_id, alive, count in self.processes():
            labels = [role, "" if node_id is None else str(node_id)]
            up.add_metric(labels, 1.0 if alive else 0.0)
            restarts.add_metric(labels, float(count))
        yield up
        yield restarts


class MetricsEndpoint:
    """The HTTP endpoint and the files behind it, for one broker (owned by its
    supervisor; :meth:`process_died` may be called from its watch thread)."""

    def __init__(self, listen: str, run_dir: Path) -> None:
        self.listen = listen
        self.directory = run_dir / METRICS_DIR
        self._server: Any = None
        self._thread: Any = None
        self.url = ""

    def start(self, children: Callable[[], list[Any]]) -> None:
        """Empty the files of a previous run and serve; raises PortInUseError for a
        taken port. ``children``: the supervisor's processes (workers/supervisor.py's
        ``Child``: role, node_id, process, restarts)."""

        def processes() -> list[tuple[str, Any, bool, int]]:
            return [
                (c.role, c.node_id, c.process is not None and c.process.is_alive(), c.restarts)
                for c in children()
            ]

        from prometheus_client import CollectorRegistry, start_http_server

        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        host, port = split_host_port("metrics_listen", self.listen)
        host = host or "0.0.0.0"
        registry = CollectorRegistry(auto_describe=False)
        registry.register(BrokerCollector(self.directory, processes))
        try:
            self._server, self._thread = start_http_server(port, host, registry)
        except OSError as exc:
            if ports.in_use(exc):
                raise ports.port_in_use_error(
                    port,
                    f"the metrics endpoint {self.listen}",
                    "stop that process, or choose another port with --metrics-listen "
                    "HOST:PORT (metrics_listen=) or turn metrics off with --metrics-listen none",
                ) from None
            raise InvalidConfigError(
                f"cannot bind the metrics endpoint {self.listen}: {exc.strerror}"
            ) from None
        bound = self._server.server_port
        shown = "127.0.0.1" if host == "0.0.0.0" else host
        self.url = f"http://{shown}:{bound}/metrics"

    def process_died(self, pid: int) -> None:
        """Forget a dead process's gauges (its counters keep counting in the totals)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self.directory))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
