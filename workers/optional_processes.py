"""The supervisor's optional processes: the web console, the mirrors and the Prometheus
metrics endpoint.

The console (workers/console/; ``console_listen``, "none": off) and the ``kvlog mirror``
processes (one per [[mirror]] table of --mirror-config, workers/mirror_shell.py) are
spawned once the broker answers and restarted like every other process. The metrics
endpoint (workers/metrics_http.py; ``metrics_listen``, "none": off) is a thread in the
supervisor's own process that reads every process's metrics files. None of them is needed
for clients to produce and consume; workers/supervisor.py owns the process lifecycle and
calls in here at start, on a death and at stop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kvlog.errors import KvlogError

from .config import SERVER_SETTINGS
from .console import listen as console_listen_setting
from .metrics_http import MetricsEndpoint
from .metrics_http import resolve_auto as resolve_metrics_auto
from .security import SecuritySettings
from .supervised import Child

log = logging.getLogger("kvlog.supervisor")

#: Roles that hold no keys (no SIGHUP on a key reload); the sweeper is the other.
ROLES = ("console", "mirror")


class OptionalProcesses:
    """The console, the mirrors and the metrics endpoint of one ``kvlog.Broker``.

    Owned by the Broker: planned and started on the thread that starts it. The metrics
    endpoint's thread reads the Broker's children through the callable given to
    :meth:`start_metrics`; :meth:`process_died` is called from the watch thread."""

    def __init__(
        self,
        *,
        listen: str,
        run_dir: Path,
        security: SecuritySettings,
        console_listen: str | None,
        metrics_listen: str | None,
        mirrors: list[dict[str, Any]] | None,
    ) -> None:
        self.security = security
        self.mirrors = [dict(m) for m in mirrors or []]
        self.console_listen, self.console_off_reason = console_listen_setting.resolve(
            SERVER_SETTINGS["console_listen"].parse(console_listen),
            listen,
            security.enabled,
        )
        self.console_url: str | None = None
        listen_at = resolve_metrics_auto(
            SERVER_SETTINGS["metrics_listen"].parse(metrics_listen), listen
        )
        self.metrics = MetricsEndpoint(listen_at, run_dir) if listen_at else None
        self.metrics_url: str | None = None

    def plan_console(self) -> None:
        """Fix the console's address (its port is checked free here, before any process
        starts)."""
        self.console_url = console_listen_setting.plan(
            self.console_listen, self.console_off_reason, self.security.enabled
        )

    def start_metrics(self, children: Callable[[], list[Child]]) -> None:
        """Start the metrics endpoint (if on). ``children`` lists the supervisor's
        processes; the endpoint's thread calls it without the supervisor's mutex (a restart
        holds it for seconds), so it must return a copy."""
        if self.metrics is not None:
            self.metrics.start(children)
            self.metrics_url = self.metrics.url

    @property
    def metrics_dir(self) -> str | None:
        """Where every process writes its metrics files (None: metrics off)."""
        return str(self.metrics.directory) if self.metrics else None

    def start(
        self,
        *,
        launch: Callable[[Child], None],
        await_ready: Callable[[list[Child]], None],
        stopping: threading.Event,
        common: dict[str, Any],
        log_level: str,
        data_dir: Path,
        bootstrap: str,
        log_dirs: list[str],
    ) -> None:
        """Spawn the console (if on), then each mirror. ``launch`` records and spawns a
        child; ``await_ready`` waits for children's ready messages (the supervisor's)."""
        if self.console_url is not None:
            console = Child(
                "console",
                console_listen_setting.process_settings(
                    self.console_url,
                    log_level,
                    data_dir,
                    bootstrap,
                    log_dirs,
                    asdict(self.security),
                ),
                endpoint=self.console_url,
            )
            launch(console)

            # Clients need not wait for the console, so its ready message is awaited on a
            # thread of its own; a death before it is logged there, and the watch thread
            # restarts it as any other process.
            def console_ready() -> None:
                try:
                    await_ready([console])
                except KvlogError as exc:
                    if not stopping.is_set():
                        log.error("%s", exc.message)

            threading.Thread(target=console_ready, name="kvlog-console-start", daemon=True).start()
        source_settings: dict[str, Any] = {}
        if self.security.enabled:  # the mirror reads the source as the server itself
            source_settings = {
                "security_protocol": "curve",
                "curve_server_key": self.security.server_secret_key,
                "curve_secret_key": self.security.server_secret_key,
            }
        for entry in self.mirrors:
            name = str(entry.get("name", ""))
            child = Child(
                "mirror",
                {
                    **common,
                    "mirror": {
                        "config": entry,
                        "source": bootstrap,
                        "state_dir": str(data_dir / "mirror" / name),
                        "source_settings": source_settings,
                    },
                },
            )
            launch(child)
            await_ready([child])

    def process_died(self, pid: int) -> None:
        """A supervised process died: the endpoint forgets its gauges (its counters keep
        counting in the totals)."""
        if self.metrics is not None:
            self.metrics.process_died(pid)

    def stop(self) -> None:
        """Stop the metrics endpoint (the processes stop with the others)."""
        if self.metrics is not None:
            self.metrics.stop()
