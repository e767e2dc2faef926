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
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import uvicorn

from kvlog.ipc.admin import Admin
from kvlog.ipc.security import load_keys

from .app import build_app
from .login import Logins
from .view import REQUEST_TIMEOUT_MS, ClusterView

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


class Views:
    """One :class:`ClusterView` per principal. Without security: one view, no login. With
    it: the console's clients hold the server's key (kvlog's own identity, the only one
    whose ``as_principal`` the servers honour) and every request of a user's view carries
    ``as_principal`` = that user, so the servers check it as that user. Owned by the
    console process; thread-safe (views are made under a lock, then shared)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._view_args: dict[str, Any] = {
            "bootstrap": settings["console"]["bootstrap"],
            "data_dir": settings["data_dir"],
            "log_dirs": settings["console"]["log_dirs"],
        }
        security = settings.get("security") or {}
        secret_file = security.get("server_secret_key")
        self.logins: Logins | None = None
        self._internal: dict[str, Any] = {}
        self._views: dict[str | None, ClusterView] = {}
        self._lock = threading.Lock()
        self._lister: Admin | None = None
        if secret_file:
            keys = load_keys(secret_file)
            data_dir = Path(settings["data_dir"])
            self.logins = Logins(
                data_dir / "meta", keys.secret or b"", data_dir / "console-revoked-sessions.json"
            )
            self._internal = {
                "security_protocol": "curve",
                "curve_server_key": keys.public.decode(),
                "curve_secret_key": secret_file,
            }
            self._lister = Admin(
                bootstrap_servers=self._view_args["bootstrap"],
                client_id="kvlog-console",
                request_timeout_ms=REQUEST_TIMEOUT_MS,
                **self._internal,
            )

    def for_user(self, user: str | None) -> ClusterView:
        """The view acting as ``user`` (None: security off, the console's own view)."""
        if (user is None) != (self.logins is None):
            raise ValueError("a user's view needs security on, and security on needs a user")
        with self._lock:
            view = self._views.get(user)
            if view is None:
                config = {**self._internal, "as_principal": user} if user else None
                view = ClusterView(
                    **self._view_args, client_config=config, group_lister=self._lister
                )
                self._views[user] = view
            return view

    def close(self) -> None:
        with self._lock:
            for view in self._views.values():
                view.close()
            self._views.clear()
            if self._lister is not None:
                self._lister.close()
        if self.logins is not None:
            self.logins.close()


def run_console(settings: dict[str, Any], conn: Any, should_stop: Callable[[], bool]) -> None:
    """Serve the console until ``should_stop()``; ``conn`` gets one ready message."""
    sock = bind(settings["endpoint"])
    views = Views(settings)
    try:
        config = uvicorn.Config(
            build_app(views),
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
        views.close()
        sock.close()
