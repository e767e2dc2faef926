"""The ``console_listen`` setting: where the web console listens.

``HOST:PORT``; ``none`` (or off, false): no console; ``auto`` (the default):
:data:`DEFAULT_CONSOLE_LISTEN`, or a free loopback port when the ZeroMQ ``listen`` picks a
free one (tests and embedded brokers), as ``kafka_listen`` does. Port 7180 stays clear of
kvlog's ZeroMQ 7092, Kafka's 9092 and up (coordinator and nodes take the ports after it)
and the 9644 neighbourhood of metrics.

Stateless functions; safe from any thread.
"""

from __future__ import annotations

from typing import Any

from kvlog.errors import InvalidConfigError

DEFAULT_CONSOLE_PORT = 7180
DEFAULT_CONSOLE_LISTEN = f"127.0.0.1:{DEFAULT_CONSOLE_PORT}"
AUTO = "auto"
_OFF = ("none", "off", "false", "")


def parse_console_listen(name: str, value: Any) -> str | None:
    """``HOST:PORT``, ``auto``, or ``none`` (-> None)."""
    if value is None or value is False:
        return None
    if not isinstance(value, str):
        raise InvalidConfigError(f"{name} must be HOST:PORT, auto or none, got {value!r}")
    spelled = value.strip()
    if spelled.lower() in _OFF:
        return None
    if spelled.lower() == AUTO:
        return AUTO
    split_listen(name, spelled)
    return spelled


def split_listen(name: str, value: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (HOST, PORT); an empty HOST is every interface (0.0.0.0)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidConfigError(
            f"{name} must be HOST:PORT with a port in 0..65535 (0: a free one), got {value!r}"
        )
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def resolve_auto(console_listen: str | None, zmq_listen: str) -> str | None:
    """``auto`` made concrete for a ZeroMQ ``listen`` endpoint."""
    if console_listen != AUTO:
        return console_listen
    if zmq_listen.startswith("tcp://") and not zmq_listen.endswith(":0"):
        return DEFAULT_CONSOLE_LISTEN
    return "127.0.0.1:0"


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
