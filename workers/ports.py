"""TCP ports for the supervisor: free ones to hand out, and who holds a taken one.

Before it starts any process, the supervisor checks that the fixed ports it is about to
hand out can be bound, so a taken port is one clear line (the port, the listener, the
process holding it) instead of a child's traceback and a half-started group. Who holds a
port comes from ``/proc/net/tcp`` and ``/proc/net/tcp6`` (the inode of the socket listening
on it) and ``/proc/PID/fd`` (which process has that inode open): Linux only, and only the
processes this user may look into; otherwise the message leaves the holder out.

Stateless functions; safe from any thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from kvlog.errors import InvalidConfigError

if TYPE_CHECKING:
    from .kafka_addresses import KafkaAddress

_LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
_CMDLINE_CHARS = 120


class PortInUseError(InvalidConfigError):
    """A listener's port is taken by another socket; ``details`` has ``port`` and ``pid``
    (None when the holder cannot be found)."""


def free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct free ports on ``host``, each held for its process to bind.

    A picked port sits in TIME_WAIT for a minute (one connection to it, closed from its
    side first): Linux then hands it to no ``bind(host, 0)`` and no outgoing connection,
    while a listener that binds it by number with SO_REUSEADDR (Python's
    ``socket.create_server`` and ZeroMQ both set it) gets it. So the other processes of
    the group, binding their ZeroMQ endpoints on port 0 meanwhile, cannot take it."""
    connect_host = "127.0.0.1" if host == "0.0.0.0" else host
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            server = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((host, 0))
            server.listen(1)
            port = server.getsockname()[1]
            with socket.create_connection((connect_host, port), timeout=5):
                accepted, _ = server.accept()
                accepted.close()  # this side closes first: its end waits in TIME_WAIT
            ports.append(port)
        return ports


def check_bindable(host: str, port: int, family: int = socket.AF_INET) -> OSError | None:
    """None if a listening socket could bind ``(host, port)`` now, else the error.
    SO_REUSEADDR as both listeners set it: a port held only by closed connections in
    TIME_WAIT counts as free, a listening socket does not."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def in_use(exc: OSError | None) -> bool:
    return exc is not None and exc.errno == errno.EADDRINUSE


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN_STATE:
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def holder_pid(port: int) -> int | None:
    """The pid of a process with a socket listening on ``port`` (any address), if one can
    be seen; the lowest such pid when several share the socket."""
    targets = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not targets:
        return None
    pids = sorted(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in targets:
                        return pid
    return None


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    text = " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())
    return text if len(text) <= _CMDLINE_CHARS else text[: _CMDLINE_CHARS - 3] + "..."


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields follow the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


_FORK_SERVER = "forkserver import main"


def describe_process(pid: int) -> str:
    """``pid N (its command line)``; a spawned child (multiprocess's ``spawn_main``) or a
    process of a fork server (as kvlog's own processes are, workers/supervised.py) is
    named with the process that started it (for the latter, the fork server's parent)."""
    cmdline = _cmdline(pid)
    if "spawn_main" in cmdline or _FORK_SERVER in cmdline:
        parent = _parent(pid)
        while parent and _FORK_SERVER in _cmdline(parent):
            parent = _parent(parent)
        if parent:
            return f"pid {pid}, started by pid {parent} ({_cmdline(parent) or '?'})"
    return f"pid {pid} ({cmdline})" if cmdline else f"pid {pid}"


def port_in_use_error(port: int, what: str, hint: str) -> PortInUseError:
    """The one-line error for a taken port: ``what`` names the listener, ``hint`` says
    how to choose another."""
    pid = holder_pid(port)
    holder = f" by {describe_process(pid)}" if pid is not None else ""
    return PortInUseError(
        f"port {port} ({what}) is already in use{holder}; {hint}", port=port, pid=pid
    )


def _zmq_tcp_address(endpoint: str) -> tuple[str, int, int] | None:
    """(host, port, family) a ``tcp://HOST:PORT`` endpoint binds, when its port is fixed
    and its host resolves; None otherwise (ipc://, port 0, an interface name: ZeroMQ
    reports those itself)."""
    if not endpoint.startswith("tcp://"):
        return None
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return None
    if host in ("*", ""):
        return "0.0.0.0", int(port), socket.AF_INET
    host = host.strip("[]")
    try:
        family, _, _, _, address = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
    except OSError:
        return None
    return str(address[0]), int(port), family


def check_listeners(zmq_listen: str, kafka: Iterable[KafkaAddress]) -> None:
    """Raise :class:`PortInUseError` (or InvalidConfigError) unless the ZeroMQ bootstrap
    endpoint and every Kafka address can be bound now."""
    kafka = list(kafka)
    zmq = _zmq_tcp_address(zmq_listen)
    if zmq is not None:
        clash = next((a for a in kafka if a.port == zmq[1]), None)
        if clash is not None:
            raise InvalidConfigError(
                f"listen {zmq_listen} and the {clash.process}'s Kafka listener "
                f"({clash.listen}) both want port {zmq[1]}; change --listen or --kafka-listen"
            )
        if in_use(check_bindable(zmq[0], zmq[1], zmq[2])):
            raise port_in_use_error(
                zmq[1],
                f"the ZeroMQ listener {zmq_listen}",
                "stop that process, or choose another port with --listen (listen=)",
            )
    for address in kafka:
        error = check_bindable(address.bind_host, address.port)
        if in_use(error):
            raise port_in_use_error(
                address.port,
                f"the {address.process}'s Kafka listener {address.listen}",
                "stop that process, or choose other ports with --kafka-listen HOST:PORT "
                "(kafka_listen=; the coordinator takes PORT+1, node N PORT+2+N) or turn the "
                "Kafka listener off with --kafka-listen none",
            )
        if error is not None:
            raise InvalidConfigError(
                f"cannot bind the {address.process}'s Kafka listener {address.listen}: "
                f"{error.strerror}"
            )
