"""The console process: binds its socket, reports it to the supervisor, serves the app
with uvicorn until the supervisor stops it.

uvicorn's own signal handling is switched off: like every kvlog process, the console
ignores SIGINT (a Ctrl-C in ``kvlog serve``'s terminal reaches every process; the
supervisor decides the order) and stops on SIGTERM through ``should_stop``, which the
server checks on each of its ticks (every 0.1 s).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

from .app import build_app
from .view import ClusterView

log = logging.getLogger("kvlog.console")


class _Server(uvicorn.Server):
    """uvicorn's server, stopped by kvlog's ``should_stop`` instead of its signals."""

    def __init__(self, config: uvicorn.Config, should_stop: Callable[[], bool]) -> None:
        super().__init__(config)
        self._should_stop = should_stop

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # process_main owns SIGTERM/SIGINT

    async def on_tick(self, counter: int) -> bool:
        if self._should_stop():
            return True
        return await super().on_tick(counter)


def bind(endpoint: str) -> socket.socket:
    """A listening socket for ``http://HOST:PORT`` (SO_REUSEADDR: a restart rebinds the
    port at once, as the supervisor fixed it before the first start)."""
    host, _, port = endpoint.removeprefix("http://").rpartition(":")
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.create_server((host.strip("[]"), int(port)), family=family, backlog=128)
    sock.set_inheritable(True)
    return sock


def run_console(settings: dict[str, Any], conn: Any, should_stop: Callable[[], bool]) -> None:
    """Serve the console until ``should_stop()``; ``conn`` gets one ready message."""
    sock = bind(settings["endpoint"])
    view = ClusterView(
        settings["console"]["bootstrap"],
        data_dir=settings["data_dir"],
        log_dirs=settings["console"]["log_dirs"],
    )
    try:
        config = uvicorn.Config(
            build_app(view),
            log_config=None,  # uvicorn's loggers go through kvlog's format (runtime.py)
            log_level=settings.get("log_level", "WARNING").lower(),
            access_log=False,
            lifespan="off",
            server_header=False,
        )
        server = _Server(config, should_stop)
        conn.send({"endpoint": settings["endpoint"], "pid": os.getpid()})
        conn.close()
        log.info("console listening on %s", settings["endpoint"])
        server.run(sockets=[sock])
    finally:
        view.close()
        sock.close()
