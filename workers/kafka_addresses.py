"""Where each server process's Kafka listener binds, and what it advertises.

Kafka clients bootstrap at one address, read Metadata, then connect to every broker id at
its advertised host:port. kvlog keeps its data path one hop on Kafka's wire too, so each
server process has its own Kafka listener. Given ``kafka_listen = "HOST:P"``:

==============  ===========  ==================================================
process         port         answers
==============  ===========  ==================================================
broker          P            the bootstrap: ApiVersions, Metadata, admin
coordinator     P + 1        FindCoordinator's groups, the group/offset APIs
node N          P + 2 + N    a Kafka broker with broker id N: Produce, Fetch, ...
==============  ===========  ==================================================

so ``kvlog serve`` with no flags answers Kafka clients on 127.0.0.1:9092 (what they try
first), 9093 and 9094 (one node): the ports a local Kafka with a few brokers has. A node
keeps its port while its log dir keeps its node id (``node.id`` in the log dir), whatever
the order of ``--log-dir``. Port 0 gives every process a free port instead, picked once
when the group starts and kept across restarts of the process (as its ZeroMQ endpoint is).

Addresses handed to clients are IPv4 literals: a host name is resolved here
("localhost" -> 127.0.0.1; librdkafka would otherwise try ::1 first), and a wildcard bind
(0.0.0.0) advertises ``kafka_advertised_host``, else the ZeroMQ ``advertised_host``, else
this host's primary IPv4 address. An explicit ``kafka_advertised_host`` is advertised
whatever the bind (Kafka's ``advertised.listeners``: a NAT or a container's address).

Plain functions and frozen values; the supervisor owns what they return.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kvlog.errors import InvalidConfigError

DEFAULT_KAFKA_PORT = 9092
DEFAULT_KAFKA_LISTEN = f"127.0.0.1:{DEFAULT_KAFKA_PORT}"
# kafka_listen = "auto": DEFAULT_KAFKA_LISTEN, unless the ZeroMQ listen address picks a free
# port (tcp port 0, or ipc://): then free Kafka ports too, so tests and embedded brokers
# that ask for free ports never collide on 9092.
AUTO = "auto"
OFF = ("none", "off", "")
COORDINATOR_OFFSET = 1
NODE_OFFSET = 2
WILDCARD = "0.0.0.0"


def parse_kafka_listen(name: str, value: Any) -> str | None:
    """The ``kafka_listen`` setting: ``HOST:PORT``, ``auto``, or ``none`` (-> None)."""
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


def split_host_port(name: str, value: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (HOST, PORT); an empty HOST is every interface."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidConfigError(
            f"{name} must be HOST:PORT with a port in 0..65535 (0: a free one), got {value!r}"
        )
    if host.startswith("[") or ":" in host:
        raise InvalidConfigError(
            f"{name}: the Kafka listener binds IPv4 addresses only, got {value!r}"
        )
    return host, int(port)


def resolve_auto(kafka_listen: str | None, zmq_listen: str) -> str | None:
    """``auto`` made concrete for a ZeroMQ ``listen`` endpoint (see :data:`AUTO`)."""
    if kafka_listen != AUTO:
        return kafka_listen
    if zmq_listen.startswith("tcp://") and not zmq_listen.endswith(":0"):
        return DEFAULT_KAFKA_LISTEN
    return "127.0.0.1:0"


def ipv4(host: str, what: str) -> str:
    """``host`` as an IPv4 literal ("localhost" -> 127.0.0.1); "" and "*" are 0.0.0.0."""
    if host in ("", "*"):
        return WILDCARD
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidConfigError(
            f"{what}: cannot resolve {host!r} to an IPv4 address ({exc})"
        ) from None
    return str(infos[0][4][0])


def primary_ipv4() -> str:
    """This host's primary IPv4 address: the source address of its default route (a UDP
    socket's connect sends nothing), else what the host name resolves to, else 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: routed like any outside address
            return str(sock.getsockname()[0])
        except OSError:
            pass
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
    return address if not address.startswith("127.") else "127.0.0.1"


def is_loopback(host: str) -> bool:
    return ipaddress.IPv4Address(host).is_loopback


@dataclass(frozen=True)
class KafkaAddress:
    """One process's Kafka listener: the IPv4 address and port it binds, the IPv4
    address clients are told to use, and which process it is ("node 0", ...)."""

    process: str
    bind_host: str
    port: int
    advertised_host: str

    @property
    def listen(self) -> str:
        """What the process binds (``ServerSettings.kafka_listen``)."""
        return f"{self.bind_host}:{self.port}"

    @property
    def advertised(self) -> str:
        """What Kafka clients connect to."""
        return f"{self.advertised_host}:{self.port}"


@dataclass(frozen=True)
class KafkaPlan:
    """Every server process's Kafka address, fixed for the life of the group."""

    broker: KafkaAddress
    coordinator: KafkaAddress
    nodes: dict[int, KafkaAddress]
    scheme: str  # how the ports were chosen, for error messages

    def __iter__(self) -> Iterator[KafkaAddress]:
        yield self.broker
        yield self.coordinator
        yield from (self.nodes[n] for n in sorted(self.nodes))

    def for_process(self, role: str, node_id: int | None = None) -> KafkaAddress:
        if role == "node":
            assert node_id is not None
            return self.nodes[node_id]
        return self.broker if role == "broker" else self.coordinator


def plan(
    kafka_listen: str,
    node_ids: Iterable[int],
    *,
    kafka_advertised_host: str | None = None,
    advertised_host: str | None = None,
    free_ports: Any = None,
) -> KafkaPlan:
    """Each process's address from ``kafka_listen`` (``HOST:PORT``, not auto). Port 0:
    ``free_ports(host, count)`` picks them (workers/ports.py's)."""
    host, port = split_host_port("kafka_listen", kafka_listen)
    bind_host = ipv4(host, "kafka_listen")
    if kafka_advertised_host:
        shown = ipv4(kafka_advertised_host, "kafka_advertised_host")
    elif bind_host == WILDCARD:
        shown = ipv4(advertised_host, "advertised_host") if advertised_host else primary_ipv4()
    else:
        shown = bind_host
    ids = sorted(node_ids)
    if port == 0:
        assert free_ports is not None
        ports = free_ports(bind_host, 2 + len(ids))
        scheme = "a free port, kept across restarts"
        node_ports = dict(zip(ids, ports[2:], strict=True))
        broker_port, coordinator_port = ports[0], ports[1]
    else:
        scheme = f"coordinator {port}+{COORDINATOR_OFFSET}, node N {port}+{NODE_OFFSET}+N"
        node_ports = {n: port + NODE_OFFSET + n for n in ids}
        broker_port, coordinator_port = port, port + COORDINATOR_OFFSET
        highest = max([coordinator_port, *node_ports.values()])
        if highest > 65535:
            raise InvalidConfigError(
                f"kafka_listen port {port} is too high: the coordinator takes port+1 and "
                f"node N port+2+N, up to {highest} here (> 65535)"
            )
    return KafkaPlan(
        broker=KafkaAddress("broker", bind_host, broker_port, shown),
        coordinator=KafkaAddress("coordinator", bind_host, coordinator_port, shown),
        nodes={n: KafkaAddress(f"node {n}", bind_host, p, shown) for n, p in node_ports.items()},
        scheme=scheme,
    )
