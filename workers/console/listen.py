"""The ``console_listen`` setting: where the web console listens.

``HOST:PORT``; ``none`` (or off, false): no console; ``auto`` (the default):
:data:`DEFAULT_CONSOLE_LISTEN`, or a free loopback port when the ZeroMQ ``listen`` picks a
free one (tests and embedded brokers), as ``kafka_listen`` does. Port 7180 stays clear of
kvlog's ZeroMQ 7092, Kafka's 9092 and up (coordinator and nodes take the ports after it)
and the 9644 neighbourhood of metrics.

Stateless functions; safe from any thread.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kvlog.errors import InvalidConfigError

from .. import ports

log = logging.getLogger("kvlog.supervisor")

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


def resolve(
    console_listen: str | None, zmq_listen: str, security_enabled: bool
) -> tuple[str | None, str | None]:
    """(``HOST:PORT`` or None, why security turned the console off or None)."""
    # With security on the console asks for a login (workers/console/login.py) and acts
    # as the logged-in principal; it never turns off for security any more. The second
    # value stays for callers that print why the console is off.
    del security_enabled
    return resolve_auto(console_listen, zmq_listen), None


def plan(
    console_listen: str | None, off_reason: str | None = None, security_enabled: bool = False
) -> str | None:
    """The console's ``http://HOST:PORT``, fixed before any process starts (port 0: a
    free one, so a restart binds the same port); a taken port raises PortInUseError."""
    if off_reason:
        log.warning("web console off: %s", off_reason)
    if console_listen is None:
        return None
    host, port = split_listen("console_listen", console_listen)
    if port == 0:
        port = ports.free_ports(host, 1)[0]
    elif ports.in_use(ports.check_bindable(host, port)):
        raise ports.port_in_use_error(
            port,
            f"the web console {console_listen}",
            "stop that process, or choose another port with --console-listen HOST:PORT "
            "(console_listen=) or turn the console off with --console-listen none",
        )
    if not is_loopback(host) and security_enabled:
        log.warning(
            "the web console binds %s over plain HTTP: its login form carries passwords in "
            "clear; put a TLS proxy in front, or bind 127.0.0.1 and use a tunnel",
            host,
        )
    elif not is_loopback(host):
        log.warning(
            "the web console binds %s without a login: anyone who can reach it may read, "
            "create and delete every topic; bind 127.0.0.1 unless that is meant",
            host,
        )
    return f"http://{host}:{port}"


def process_settings(
    endpoint: str,
    log_level: str,
    data_dir: Path,
    bootstrap: str,
    log_dirs: list[str],
    security: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the supervisor hands the console process (workers/console/server.py);
    ``security`` is the servers' SecuritySettings as a dict (a login is asked when it has
    a server key)."""
    return {
        "log_level": log_level,
        "data_dir": str(data_dir),
        "endpoint": endpoint,
        "console": {"bootstrap": bootstrap, "log_dirs": log_dirs},
        "security": security or {},
    }
