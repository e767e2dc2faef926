"""A supervised process: the supervisor's record of one child, how it is spawned and how
its ready message is awaited.

workers/supervisor.py starts, watches and restarts these; workers/optional_processes.py
builds the records of the optional ones (console, mirrors). workers/pool.py spawns its
workers under :func:`main_module_hidden` too.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import multiprocess
import multiprocess.reduction

from kvlog.errors import KafkaTimeoutError, KvlogError

from .kafka_addresses import KafkaAddress
from .runtime import process_main

# A process that ran this long before it died is restarted after restart.backoff.ms again.
HEALTHY_AFTER_S = 30.0


@dataclass
class Child:
    """One supervised process. Owned by the supervisor; its watch thread changes it under
    the supervisor's mutex."""

    role: str
    settings: dict[str, Any]
    node_id: int | None = None
    log_dir: str | None = None
    process: Any = None
    endpoint: str = ""
    kafka: KafkaAddress | None = None
    pid: int = 0
    started_at: float = 0.0
    restarts: int = 0
    # The wait before its next restart (None: restart.backoff.ms, the supervisor's).
    backoff_s: float | None = None
    history: list[str] = field(default_factory=list)

    def restart_delay(self, backoff_ms: int, backoff_max_ms: int) -> float:
        """Seconds to wait before restarting this process, which just died: one that
        dies again soon after its start waits twice as long each time, up to
        ``backoff_max_ms`` (restart.backoff.max.ms; below ``backoff_ms``, as Kafka's
        reconnect.backoff.max.ms, it is ``backoff_ms``); one that ran a while starts over
        at ``backoff_ms`` (restart.backoff.ms). A wait set on the record is kept (a test
        may hold a restart back longer)."""
        first = backoff_ms / 1000
        cap = max(backoff_max_ms / 1000, first)
        if self.backoff_s is None or time.time() - self.started_at > HEALTHY_AFTER_S:
            self.backoff_s = first
        delay = self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, cap)
        return delay

    def exited(self) -> KvlogError:
        """The error for a process that died while it started."""
        return KvlogError(
            f"kvlog {self.role} exited during start-up (exit code {self.process.exitcode}); "
            "see its log lines above"
        )

    def status(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "node_id": self.node_id,
            "pid": self.pid,
            "endpoint": self.endpoint,
            "kafka": self.kafka.advertised if self.kafka else None,
            "kafka_listen": self.kafka.listen if self.kafka else None,
            "log_dir": self.log_dir,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
        }


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    """Spawned children re-import the parent's ``__main__`` script unless it has no file
    (as in a REPL). Ours only need kvlog's own modules, so hide it while starting them:
    ``kvlog.Broker`` then works from scripts without an ``if __name__ == "__main__"``
    guard, from notebooks and from the REPL."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


# What the fork server imports once (most of each process's start-up CPU): the server
# roles' modules and the sweeper's. Not prometheus_client, which a process may import only
# after it has set its multiprocess directory (workers/metrics.py); nothing here opens a
# ZeroMQ context or an LMDB environment, or starts a thread, on import.
PRELOAD = (
    "kvlog.workers.runtime",
    "kvlog.workers.coordinator_shell",
    "kvlog.workers.node_shell",
    "kvlog.workers.broker_shell",
    "kvlog.workers.sweeper",
)


def context() -> Any:
    """The ``multiprocess`` context the supervisor starts its processes in: a fork server.

    Its server process is a fresh interpreter (not a fork of the caller) that imports
    :data:`PRELOAD` once, then forks each process the supervisor asks for; every process
    still opens its own ZeroMQ context and LMDB environments after the fork. One fork
    server serves every ``kvlog.Broker`` of the calling process (a process that starts
    several, as a test run does, pays the imports once) and exits with it; the processes
    it forked then get SIGTERM (runtime.py's parent-death signal)."""
    ctx = multiprocess.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


class InheritedFd:
    """One of the supervisor's file descriptors as it is when a process is started,
    duplicated into that process (a file descriptor number there once unpickled). A
    forked process has the fork server's stdout and stderr, fixed when it started; the
    supervisor hands its current ones over so that its processes log where it does now,
    as spawned ones did (a caller may point fd 2 at a file while it starts a broker)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickled while the process starts: DupFd sends the descriptor along with it.
        return (_detach, (multiprocess.reduction.DupFd(self.fd),))


def _is_open(fd: int) -> bool:
    """Whether ``fd`` is open here (a daemon may have closed its stdout)."""
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _detach(dup: Any) -> int:
    return int(dup.detach())


def warm_up() -> None:
    """Start the fork server now (if it is not running), so that its imports overlap the
    supervisor's own start-up work; the first spawn waits for them."""
    import multiprocess.forkserver

    with main_module_hidden():
        multiprocess.forkserver.ensure_running()


def spawn(ctx: Any, child: Child, *, late: bool = False) -> None:
    """Start ``child``'s process in the ``multiprocess`` context ``ctx``; its ready
    message is awaited later by :func:`await_ready`.

    ``late``: the process imports its modules, then waits for the rest of its settings
    (:func:`send_late_settings`) before it starts its server. The supervisor starts the
    nodes and the broker beside the coordinator this way: their imports (most of a
    process's start) overlap the coordinator's start, and its endpoint follows once it
    is bound."""
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    if late:
        child.settings["_late"] = True
    process = ctx.Process(
        target=process_main,
        # What a spawned process inherited and a forked one would have from the fork
        # server instead: the supervisor's stdout, stderr and environment as they are now.
        args=(
            child.role,
            child.settings,
            child_conn,
            tuple(InheritedFd(fd) if _is_open(fd) else None for fd in (1, 2)),
            dict(os.environ),
        ),
        name=f"kvlog-{child.role}{'' if child.node_id is None else child.node_id}",
        daemon=True,
    )
    try:
        with main_module_hidden():
            process.start()
    finally:
        child.settings.pop("_late", None)  # a restart starts with every setting
    child_conn.close()
    child.process = process
    child.pid = process.pid
    child.started_at = time.time()
    child.settings["_ready"] = parent_conn


def send_late_settings(child: Child, update: dict[str, dict[str, Any]]) -> None:
    """Complete the settings of a child spawned ``late``: each ``{section: {key: value}}``
    of ``update`` goes into its settings (here too, for its restarts) and to the process."""
    for section, values in update.items():
        child.settings[section].update(values)
    try:
        child.settings["_ready"].send({"settings": update})
    except OSError:
        pass  # it died already: await_ready says so


def await_ready(children: list[Child], timeout_s: float) -> None:
    """Wait for each spawned child's ready message (all within ``timeout_s``); a child
    that dies, fails or is late raises."""
    deadline = time.monotonic() + timeout_s
    for child in children:
        conn = child.settings.pop("_ready")
        try:
            while not conn.poll(0.05):
                if not child.process.is_alive():
                    raise child.exited()
                if time.monotonic() > deadline:
                    raise KafkaTimeoutError(f"kvlog {child.role} did not start in time")
            try:
                message = conn.recv()
            except (EOFError, OSError):
                raise child.exited() from None
        finally:
            conn.close()
        if "error" in message:
            raise KvlogError(f"kvlog {child.role} failed to start: {message['error']}")
        if message["endpoint"]:
            child.endpoint = message["endpoint"]
            # A restart binds the same endpoint, so clients find it again.
            child.settings["endpoint"] = child.endpoint


def await_nodes(
    bootstrap: str,
    count: int,
    children: list[Child],
    timeout_s: float,
    socket_options: dict[int, Any],
) -> None:
    """Wait until the broker's metadata shows ``count`` nodes alive (each has registered
    with the coordinator); a child that died meanwhile, or the timeout, raises."""
    from kvlog.ipc.rpc import blocking_call

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            reply = blocking_call(
                bootstrap,
                "metadata",
                {"topics": []},
                timeout_s=2.0,
                socket_options=socket_options,
            )
            alive = [n for n in reply.get("nodes", []) if n.get("alive")]
            if len(alive) >= count:
                return
        except KvlogError:
            pass
        for child in children:
            if child.process is not None and not child.process.is_alive():
                raise child.exited()
        if time.monotonic() > deadline:
            raise KafkaTimeoutError(
                f"kvlog nodes did not register with the coordinator within {timeout_s:.0f} s"
            )
        time.sleep(0.02)
