"""Process entry points: what a spawned broker, node, coordinator or sweeper runs.

Each process is forked by the supervisor's fork server (workers/supervised.py), which has
imported the modules and opened nothing: it opens its own ZeroMQ context and LMDB
environments after the fork (none crosses one), binds, reports the endpoint it bound to
the supervisor through a pipe, and loops until SIGTERM. It asks the kernel to send it
SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``; the fork server exits with the
supervisor), so no process is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kvlog.allocator import tune_allocator

log = logging.getLogger("kvlog")

ROLES = ("coordinator", "node", "broker", "sweeper", "console", "mirror")


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def setup_logging(role: str, level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {role}[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def _take_streams(streams: tuple[int | None, ...]) -> None:
    """Make the supervisor's stdout and stderr (as they were when it started this process,
    received as descriptors; None: it had none) this process's fds 1 and 2."""
    for target, fd in zip((1, 2), streams, strict=False):
        if fd is not None and fd != target:
            os.dup2(fd, target)
            os.close(fd)


def process_main(
    role: str,
    settings: dict[str, Any],
    conn: Any,
    streams: tuple[int | None, ...] = (),
    environ: dict[str, str] | None = None,
) -> None:
    """Run one kvlog process until SIGTERM. ``conn`` receives one ready message;
    ``streams``: the descriptors to take as stdout and stderr; ``environ``: the
    environment to run in (the supervisor's, not the fork server's)."""
    _take_streams(streams)
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    _die_with_parent()
    tune_allocator()
    setup_logging(
        role if role != "node" else f"node{settings.get('node_id', '')}",
        settings.get("log_level", "INFO"),
    )
    parent = os.getppid()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    # A file-size limit (RLIMIT_FSIZE) must fail the write (EFBIG -> STORAGE_ERROR, the log
    # dir goes offline), not kill the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # Until the server is up a reload means nothing (it reads the keys when it starts);
    # the default action would kill the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def should_stop() -> bool:
        return stop.is_set() or os.getppid() != parent

    if settings.get("metrics_dir"):
        # Before anything imports prometheus_client: it picks its value class on import.
        from .metrics import enable

        enable(settings["metrics_dir"])
    try:
        if role in ("sweeper", "mirror"):
            conn.send({"endpoint": "", "pid": os.getpid()})
            conn.close()
            if role == "mirror":
                raise SystemExit(run_mirror(settings, should_stop))
            run_sweeper(settings, should_stop)
            return
        if role == "console":
            from .console.server import run_console

            run_console(settings, conn, should_stop)
            return
        run_server(role, settings, conn, should_stop)
    except Exception as exc:
        log.exception("%s failed", role)
        with contextlib.suppress(Exception):
            conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise SystemExit(1) from exc


def _import_role(role: str) -> None:
    """Import the role's server module (most of a process's start-up CPU)."""
    modules = {
        "coordinator": ".coordinator_shell",
        "node": ".node_shell",
        "broker": ".broker_shell",
    }
    if role not in modules:
        raise ValueError(f"unknown role {role!r}")
    importlib.import_module(modules[role], __package__)


def _await_late_settings(settings: dict[str, Any], conn: Any, should_stop: Any) -> None:
    """A process spawned ``late`` (workers/supervised.py) waits here for the rest of its
    settings (the coordinator's endpoint, once it is bound); a stop meanwhile ends it."""
    if not settings.pop("_late", False):
        return
    while not conn.poll(0.05):
        if should_stop():
            raise SystemExit(0)
    try:
        message = conn.recv()
    except (EOFError, OSError):
        raise SystemExit(0) from None  # the supervisor gave up on this start
    for section, values in message["settings"].items():
        settings[section].update(values)


def run_server(role: str, settings: dict[str, Any], conn: Any, should_stop: Any) -> None:
    _import_role(role)
    _await_late_settings(settings, conn, should_stop)

    import zmq

    from kvlog.lmdb_store import LogDir

    from .security import SecuritySettings, ServerSecurity
    from .settings import ServerSettings
    from .zmq_server import bind_router

    ctx = zmq.Context()
    store = None
    server: Any = None
    security = None
    try:
        sec = SecuritySettings(**settings.get("security", {}))
        if sec.enabled:
            security = ServerSecurity(ctx, sec, Path(settings["data_dir"]) / "meta")
        server_settings = ServerSettings(**settings.get("server", {}))
        router, endpoint = bind_router(
            ctx,
            settings["endpoint"],
            max_frame_bytes=server_settings.max_frame_bytes,
            security=security,
        )
        if role == "coordinator":
            from .coordinator_shell import CoordinatorServer
            from .settings import CoordinatorSettings

            store = LogDir(Path(settings["data_dir"]) / "meta")
            server = CoordinatorServer(
                ctx,
                router,
                CoordinatorSettings(**settings["coordinator"]),
                store,
                security,
                server_settings,
            )
        elif role == "node":
            from .node_shell import NodeServer
            from .settings import NodeSettings

            node_settings = NodeSettings(**settings["node"])
            store = LogDir(node_settings.log_dir)
            server = NodeServer(
                ctx, router, endpoint, node_settings, store, security, server_settings
            )
        elif role == "broker":
            from .broker_shell import BrokerServer
            from .settings import BrokerSettings

            server = BrokerServer(
                ctx, router, BrokerSettings(**settings["broker"]), security, server_settings
            )
        else:
            raise ValueError(f"unknown role {role!r}")
        server.limit_connections(server_settings.max_connections)
        server.metrics = _metrics(role, settings, server)
        conn.send({"endpoint": endpoint, "pid": os.getpid()})
        conn.close()
        signal.signal(signal.SIGHUP, lambda *_: setattr(server, "reload_requested", True))
        log.info("%s listening on %s", role, endpoint)
        profile_dir = os.environ.get("KVLOG_PROFILE_DIR")
        if profile_dir:  # a developer aid: cProfile each server process into this dir
            import cProfile

            profiler = cProfile.Profile()
            profiler.runcall(server.serve_forever, should_stop)
            name = role if role != "node" else f"node{settings.get('node_id', '')}"
            profiler.dump_stats(str(Path(profile_dir) / f"{name}-{os.getpid()}.prof"))
        else:
            server.serve_forever(should_stop)
        log.info("%s stopping", role)
    finally:
        if server is not None:
            server.close()
        elif security is not None:
            security.close()
        ctx.destroy(linger=0)  # closes whatever is still open, even after a failed start
        if store is not None:
            store.close()


def _metrics(role: str, settings: dict[str, Any], target: Any) -> Any:
    """This process's metrics (workers/metrics.py) over ``target``, None when off."""
    if not settings.get("metrics_dir"):
        return None
    from .metrics import process_metrics

    metrics = process_metrics(role, settings.get("node_id"))
    metrics.attach(target)
    return metrics


def run_sweeper(settings: dict[str, Any], should_stop: Any) -> None:
    """Apply retention and compaction to every log dir (``workers/sweeper.py``)."""
    from .settings import SweeperSettings
    from .sweeper import run_sweeper as sweeper_loop

    metrics = _metrics("sweeper", settings, None)
    sweeper_loop(SweeperSettings(**settings["sweeper"]), should_stop, metrics)


def run_mirror(settings: dict[str, Any], should_stop: Any) -> int:
    """Run one ``kvlog mirror`` (workers/mirror_shell.py) until SIGTERM; its exit code."""
    from .mirror_model import spec_from_config
    from .mirror_shell import Mirror

    entry = settings["mirror"]
    spec = spec_from_config(
        entry["config"],
        source=entry["source"],
        state_dir=entry["state_dir"],
        source_settings=entry.get("source_settings") or {},
    )
    mirror = Mirror(spec)
    mirror.metrics = _metrics("mirror", settings, None)

    def watch() -> None:
        while not should_stop():
            time.sleep(0.2)
        mirror.stop()

    threading.Thread(target=watch, name="mirror-stop", daemon=True).start()
    return mirror.run()
