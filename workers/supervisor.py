"""The supervisor: starts, watches and stops a kvlog process group.

``kvlog serve`` runs it in the foreground; ``kvlog.Broker`` runs it inside the caller's
process (a context manager)::

    with kvlog.Broker(data_dir="./kvlog-data", listen="tcp://127.0.0.1:0") as broker:
        producer = kvlog.Producer(bootstrap_servers=broker.bootstrap)

It starts (``multiprocess``, from a fork server: workers/supervised.py) the coordinator,
one node per log dir, the broker and the retention sweeper at once (the nodes and the
broker are handed the coordinator's endpoint once it has bound); waits until every node
has registered; restarts any process that dies (same endpoint, so clients reconnect by
themselves) after a back-off (``restart.backoff.ms``, doubling up to
``restart.backoff.max.ms``) and logs why; and on stop sends SIGTERM, waits a few
seconds, then SIGKILLs what is left.

Each server process also gets its Kafka listener address (``ServerSettings.kafka_listen``
and ``kafka_advertised_host``; the port scheme is in workers/kafka_addresses.py), fixed
before any process starts and kept across restarts. Every fixed port is checked first: a
taken one fails the start with one line naming the port and its holder, and a data dir
this start created is removed again.

One child's record, spawn and ready wait: workers/supervised.py. The optional processes
(web console, mirrors, Prometheus endpoint): workers/optional_processes.py. The data dir's
layout and run files: workers/data_dir.py (``STATUS_FILE`` and
``read_status`` are re-exported here for the tools).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import multiprocess
import multiprocess.connection

from kvlog.data_format import check_data_dir, stamp_data_dir
from kvlog.errors import InvalidConfigError, KvlogError
from kvlog.ipc.security import load_keys
from kvlog.ipc.wire import advertise, normalize_endpoint

from . import kafka_addresses, ports
from .config import BROKER_CONFIG, SERVER_SETTINGS, process_settings
from .console import listen as console_listen_setting
from .data_dir import (
    STATUS_FILE,
    internal_endpoint,
    missing_roots,
    node_id_for,
    read_status,
    write_status,
)
from .kafka_addresses import KafkaAddress, KafkaPlan
from .kafka_security import KafkaSecurityConfig
from .metrics_http import MetricsEndpoint
from .optional_processes import ROLES as OPTIONAL_ROLES
from .optional_processes import OptionalProcesses
from .security import SecuritySettings, client_options_for
from .settings import SupervisorSettings
from .supervised import (
    Child,
    await_nodes,
    await_ready,
    send_late_settings,
    spawn,
    warm_up,
)
from .supervised import context as supervised_context

log = logging.getLogger("kvlog.supervisor")

_STOP_ORDER = ("console", "mirror", "broker", "sweeper", "node", "coordinator")


DEFAULT_DATA_DIR: str = SERVER_SETTINGS.default("data_dir")
DEFAULT_LISTEN: str = SERVER_SETTINGS.default("listen")
DEFAULT_KAFKA_LISTEN: str = SERVER_SETTINGS.default("kafka_listen")
DEFAULT_METRICS_LISTEN: str = SERVER_SETTINGS.default("metrics_listen")


def _path(value: str | os.PathLike[str] | None) -> str | None:
    """A file setting as an absolute path (processes may run elsewhere)."""
    return None if value is None else str(Path(value).resolve())


class Broker:
    """A kvlog broker: the whole process group, owned by the calling process.

    ``config`` takes broker config keys (workers/config.py's table); ``self.config`` holds
    every key's value by its dotted name, defaults filled in.

    ``kafka_listen`` is the Kafka bootstrap ``HOST:PORT`` (None or "none": no Kafka
    listener); its default ``"auto"`` is 127.0.0.1:9092, or free ports when ``listen``
    picks a free one (``tcp://127.0.0.1:0``, as tests and embedded brokers do). After
    :meth:`start`, ``kafka_bootstrap`` is the "host:port" Kafka clients use (None when off)
    and ``kafka_off_reason`` says why it is off when security turned it off. With security
    on, Kafka clients log in with SASL (``kafka_sasl_mechanisms``) and/or TLS client
    certificates (``kafka_ssl_*``): workers/kafka_security.py; ``kafka_security_protocol``
    is the listeners' (PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL).

    ``metrics_listen`` is the Prometheus endpoint's ``HOST:PORT`` (workers/metrics_http.py;
    None or "none": off; ``"auto"`` as for Kafka, port 9645); after :meth:`start`,
    ``metrics_url`` is its URL (None when off).
    ``console_listen`` is the web console's ``HOST:PORT`` (workers/console/listen.py;
    "none": off). After :meth:`start`, ``console_url`` is its ``http://host:port`` (None
    when off); with security on it asks for a login (workers/console/login.py), and
    ``console_off_reason`` stays None (kept for callers that print it).

    Owned by the thread that starts it; its watch thread restarts processes under a lock,
    and :meth:`stop`, :meth:`processes` and :meth:`reload_security` may be called from
    any thread."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
        listen: str = DEFAULT_LISTEN,
        *,
        log_dirs: list[str | os.PathLike[str]] | None = None,
        config: dict[str, Any] | None = None,
        log_level: str = "WARNING",
        start_timeout_s: float = 60.0,
        curve_secret_key: str | os.PathLike[str] | None = None,
        curve_authorized_keys: str | os.PathLike[str] | None = None,
        super_users: list[str] | None = None,
        advertised_host: str | None = None,
        kafka_listen: str | None = DEFAULT_KAFKA_LISTEN,
        kafka_advertised_host: str | None = None,
        kafka_sasl_mechanisms: list[str] | str | None = None,
        kafka_ssl_certfile: str | os.PathLike[str] | None = None,
        kafka_ssl_keyfile: str | os.PathLike[str] | None = None,
        kafka_ssl_cafile: str | os.PathLike[str] | None = None,
        kafka_ssl_client_auth: str = "none",
        metrics_listen: str | None = DEFAULT_METRICS_LISTEN,
        console_listen: str | None = console_listen_setting.AUTO,
        mirrors: list[dict[str, Any]] | None = None,
    ) -> None:
        self.advertised_host = advertised_host
        self.kafka_advertised_host = kafka_advertised_host
        self.config = BROKER_CONFIG.complete(config)
        self.supervisor_settings = SupervisorSettings(**process_settings(self.config, "supervisor"))
        self.security = SecuritySettings(
            str(curve_secret_key) if curve_secret_key else None,
            str(curve_authorized_keys) if curve_authorized_keys else None,
            list(super_users or []),
        )
        self.security.validate()
        self._internal_options: dict[int, Any] = {}
        if self.security.enabled:
            keys = load_keys(self.security.server_secret_key or "")
            self._internal_options = client_options_for(keys.public, keys.secret or b"")
        self.data_dir = Path(data_dir).resolve()
        self.listen = normalize_endpoint(listen)
        self.kafka_listen = kafka_addresses.resolve_auto(
            SERVER_SETTINGS["kafka_listen"].parse(kafka_listen), self.listen
        )
        self.kafka_security = KafkaSecurityConfig(
            tuple(SERVER_SETTINGS["kafka_sasl_mechanisms"].parse(kafka_sasl_mechanisms or [])),
            _path(kafka_ssl_certfile),
            _path(kafka_ssl_keyfile),
            _path(kafka_ssl_cafile),
            SERVER_SETTINGS["kafka_ssl_client_auth"].parse(kafka_ssl_client_auth),
        )
        self.kafka_security.validate(self.security.enabled)
        self.kafka_security_protocol = self.kafka_security.protocol(self.security.enabled)
        self.kafka_off_reason: str | None = None
        if self.kafka_listen is not None and self.kafka_security_protocol is None:
            # Security on and no way for a Kafka client to log in: it would bypass the
            # CURVE authentication every ZeroMQ socket requires.
            self.kafka_off_reason = self.kafka_security.off_reason(self.security.enabled)
            self.kafka_listen = None
        self.run_dir = self.data_dir / "run"
        # The console, the mirrors and the metrics endpoint: workers/optional_processes.py.
        self.optional = OptionalProcesses(
            listen=self.listen,
            run_dir=self.run_dir,
            security=self.security,
            console_listen=console_listen,
            metrics_listen=metrics_listen,
            mirrors=mirrors,
        )
        self.log_dirs = [Path(d).resolve() for d in (log_dirs or [self.data_dir / "logs" / "0"])]
        self.log_level = log_level
        self.start_timeout_s = start_timeout_s
        self.children: list[Child] = []
        self._ctx = supervised_context()
        self._lock_file: Any = None
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self._wake: tuple[int, int] = (-1, -1)  # the watch thread's wake-up pipe
        self._mutex = threading.Lock()
        self.bootstrap = ""
        self.coordinator_endpoint = ""
        self.kafka_plan: KafkaPlan | None = None
        self.kafka_bootstrap: str | None = None

    @property
    def mirrors(self) -> list[dict[str, Any]]:
        return self.optional.mirrors

    @property
    def console_listen(self) -> str | None:
        return self.optional.console_listen

    @property
    def console_off_reason(self) -> str | None:
        return self.optional.console_off_reason

    @property
    def console_url(self) -> str | None:
        return self.optional.console_url

    @property
    def metrics(self) -> MetricsEndpoint | None:
        return self.optional.metrics

    @property
    def metrics_url(self) -> str | None:
        return self.optional.metrics_url

    def __repr__(self) -> str:
        return f"Broker(data_dir={str(self.data_dir)!r}, bootstrap={self.bootstrap!r})"

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start -----------------------------------------------------------------------------

    def _lock(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.run_dir / "supervisor.lock", "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.seek(0)
            owner = self._lock_file.read().strip() or "another process"
            self._lock_file.close()
            self._lock_file = None
            raise InvalidConfigError(
                f"data dir {self.data_dir} is in use by kvlog pid {owner}; stop it first or "
                "use another --data-dir"
            ) from None
        self._lock_file.truncate(0)
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()

    def start(self) -> Broker:
        created = missing_roots([self.data_dir, *self.log_dirs])
        self._lock()
        try:
            check_data_dir(self.data_dir, self.log_dirs)
            self._start_all()
            stamp_data_dir(self.data_dir, self.log_dirs)
        except BaseException:
            # Until the broker process is up no client can reach the group, so nothing it
            # acknowledged can be lost by removing a data dir this failed start created.
            reached = bool(self.bootstrap)
            self.stop()
            if not reached:
                for path in created:
                    shutil.rmtree(path, ignore_errors=True)
            raise
        # stop() writes a byte here to wake the watch thread at once.
        self._wake = os.pipe()
        self._monitor = threading.Thread(target=self._watch, name="kvlog-supervisor", daemon=True)
        self._monitor.start()
        return self

    def _start_all(self) -> None:
        cfg = self.config
        taken: set[int] = set()
        nodes = []
        for log_dir in self.log_dirs:
            node_id = node_id_for(log_dir, taken)
            taken.add(node_id)
            nodes.append((node_id, log_dir))
        self._plan_kafka(sorted(taken))
        self.optional.plan_console()
        # Nothing refused the start: the fork server's imports overlap what follows.
        warm_up()
        # Each process's settings: what every process takes, then its role's settings
        # (the broker config keys the table says it uses, and what only the supervisor
        # knows). workers/runtime.py turns them into workers/settings.py's dataclasses.
        self.optional.start_metrics(lambda: list(self.children))
        common = {
            "log_level": self.log_level,
            "data_dir": str(self.data_dir),
            "security": asdict(self.security),
            "metrics_dir": self.optional.metrics_dir,
        }
        coordinator = Child(
            "coordinator",
            {
                **common,
                "server": self._server_settings("coordinator"),
                "endpoint": internal_endpoint(self.listen, self.run_dir, "coordinator"),
                "coordinator": {
                    "data_dir": str(self.data_dir),
                    "node_ids": sorted(taken),
                    **process_settings(cfg, "coordinator"),
                },
            },
            kafka=self._kafka_for("coordinator"),
        )
        # The nodes and the broker need the coordinator's endpoint, which it knows once it
        # has bound: they are spawned beside it and wait for it after their imports (most
        # of a process's start), so the starts overlap instead of following each other.
        group = []
        for node_id, log_dir in nodes:
            child = Child(
                "node",
                {
                    **common,
                    "server": self._server_settings("node", node_id),
                    "node_id": node_id,
                    "endpoint": internal_endpoint(self.listen, self.run_dir, f"node{node_id}"),
                    "node": {
                        "node_id": node_id,
                        "log_dir": str(log_dir),
                        "coordinator": "",
                        "advertised_host": self.advertised_host,
                        **process_settings(cfg, "node"),
                    },
                },
                node_id=node_id,
                log_dir=str(log_dir),
                kafka=self._kafka_for("node", node_id),
            )
            group.append(child)
        group.append(
            Child(
                "broker",
                {
                    **common,
                    "server": self._server_settings("broker"),
                    "endpoint": self.listen,
                    "broker": {"coordinator": "", **process_settings(cfg, "broker")},
                },
                kafka=self._kafka_for("broker"),
            )
        )
        sweeper = Child(
            "sweeper",
            {
                **common,
                "sweeper": {
                    "data_dir": str(self.data_dir),
                    "log_dirs": [str(d) for _, d in nodes],
                    **process_settings(cfg, "sweeper"),
                },
            },
        )
        self._launch(coordinator)
        for child in group:
            self.children.append(child)
            spawn(self._ctx, child, late=True)
        await_ready([coordinator], self.start_timeout_s)
        self.coordinator_endpoint = advertise(coordinator.endpoint, self.advertised_host)
        for child in group:
            send_late_settings(child, {child.role: {"coordinator": self.coordinator_endpoint}})
        # The sweeper reads the metadata dir, which the coordinator creates on its start.
        self._launch(sweeper)
        await_ready([*group, sweeper], self.start_timeout_s)
        self.bootstrap = advertise(group[-1].endpoint, self.advertised_host)
        self.optional.start(
            launch=self._launch,
            await_ready=lambda children: await_ready(children, self.start_timeout_s),
            stopping=self._stopping,
            common=common,
            log_level=self.log_level,
            data_dir=self.data_dir,
            bootstrap=self.bootstrap,
            log_dirs=[str(d) for _, d in nodes],
        )
        self._write_status()
        await_nodes(
            self.bootstrap,
            len(nodes),
            self.children,
            self.start_timeout_s,
            self._internal_options,
        )
        log.info(
            "kvlog broker ready on %s, Kafka bootstrap %s (%d node(s))",
            self.bootstrap,
            self.kafka_bootstrap or "off",
            len(nodes),
        )

    def _launch(self, child: Child) -> None:
        """Record and spawn one more child (the optional processes')."""
        self.children.append(child)
        spawn(self._ctx, child)

    def _plan_kafka(self, node_ids: list[int]) -> None:
        """Fix every process's Kafka address, then check that every fixed port is free
        (the ZeroMQ bootstrap's too) before any process starts."""
        if self.kafka_off_reason:
            log.warning("Kafka listener off: %s", self.kafka_off_reason)
        if self.kafka_listen is not None:
            self.kafka_plan = kafka_addresses.plan(
                self.kafka_listen,
                node_ids,
                kafka_advertised_host=self.kafka_advertised_host,
                advertised_host=self.advertised_host,
                free_ports=ports.free_ports,
            )
            self.kafka_bootstrap = self.kafka_plan.broker.advertised
            if not self.security.enabled and not kafka_addresses.is_loopback(
                self.kafka_plan.broker.bind_host
            ):
                log.warning(
                    "the Kafka listener binds %s without security: anyone who can reach "
                    "it may read and write every topic; bind 127.0.0.1 unless that is meant",
                    self.kafka_plan.broker.bind_host,
                )
        ports.check_listeners(self.listen, self.kafka_plan or [])

    def _kafka_for(self, role: str, node_id: int | None = None) -> KafkaAddress | None:
        return self.kafka_plan.for_process(role, node_id) if self.kafka_plan else None

    def _server_settings(self, role: str, node_id: int | None = None) -> dict[str, Any]:
        """``ServerSettings`` of one server process: the broker keys every server takes and
        its own Kafka address (fixed: a restart binds the same port)."""
        address = self._kafka_for(role, node_id)
        kafka = self.kafka_security
        return {
            **process_settings(self.config, "server"),
            "kafka_listen": address.listen if address else None,
            "kafka_advertised_host": address.advertised_host if address else None,
            "kafka_sasl_mechanisms": list(kafka.sasl_mechanisms),
            "kafka_ssl_certfile": kafka.ssl_certfile,
            "kafka_ssl_keyfile": kafka.ssl_keyfile,
            "kafka_ssl_cafile": kafka.ssl_cafile,
            "kafka_ssl_client_auth": kafka.ssl_client_auth,
        }

    def _write_status(self) -> None:
        write_status(
            self.run_dir,
            {
                "supervisor_pid": os.getpid(),
                "bootstrap": self.bootstrap,
                "kafka_bootstrap": self.kafka_bootstrap,
                "metrics": self.metrics_url,
                "console": self.console_url,
                "processes": [c.status() for c in self.children],
            },
        )

    # -- watch and restart -----------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.is_set():
            with self._mutex:
                sentinels = {c.process.sentinel: c for c in self.children if c.process}
            ready = multiprocess.connection.wait([*sentinels, self._wake[0]], timeout=0.2)
            if self._stopping.is_set():
                return
            for sentinel in ready:
                child = sentinels[sentinel]
                self._restart(child)

    def _restart(self, child: Child) -> None:
        child.process.join(1.0)  # the sentinel fires a moment before the exit code is set
        code = child.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        log.warning("kvlog %s (pid %d) died (%s); restarting", child.role, child.pid, how)
        child.history.append(how)
        self.optional.process_died(child.pid)
        if child.role == "node" and self.coordinator_endpoint:
            self._report_node_down(child)
        settings = self.supervisor_settings
        delay = child.restart_delay(settings.restart_backoff_ms, settings.restart_backoff_max_ms)
        if self._stopping.wait(delay):  # a stop does not wait for the back-off
            return
        with self._mutex:
            child.restarts += 1
            try:
                spawn(self._ctx, child)
                await_ready([child], self.start_timeout_s)
            except Exception as exc:  # the watch thread must outlive any failed restart
                message = exc.message if isinstance(exc, KvlogError) else repr(exc)
                log.error("restart of kvlog %s failed: %s; trying again", child.role, message)
            self._write_status()

    def _report_node_down(self, child: Child) -> None:
        """Tell the coordinator at once, so leaderships move now rather than after
        node.session.timeout.ms (the supervisor sees the process die; Kafka cannot)."""
        from kvlog.ipc.rpc import blocking_call

        try:
            blocking_call(
                self.coordinator_endpoint,
                "node_down",
                {"node_id": child.node_id, "pid": child.pid},
                timeout_s=2.0,
                socket_options=self._internal_options,
            )
        except KvlogError as exc:
            log.info("could not report node %s down: %s", child.node_id, exc.message)

    # -- stop ------------------------------------------------------------------------------

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM every process (broker first, coordinator last); SIGKILL stragglers."""
        self._stopping.set()
        # The metrics endpoint's server takes up to half a second to notice its shutdown:
        # it does so while the processes stop.
        metrics_stop = threading.Thread(target=self.optional.stop, name="kvlog-metrics-stop")
        metrics_stop.start()
        if self._monitor is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake[1], b"x")
            if self._monitor is not threading.current_thread():
                self._monitor.join(timeout=2)
        with self._mutex:
            for role in _STOP_ORDER:
                for child in self.children:
                    if child.role == role and child.process is not None:
                        with contextlib.suppress(Exception):
                            if child.process.is_alive():
                                os.kill(child.process.pid, signal.SIGTERM)
                if role == "console":
                    # Its clients would log the broker's going as lost connections.
                    for child in self.children:
                        if child.role == role and child.process is not None:
                            child.process.join(2.0)
                if role == "mirror":  # they finish against the processes still up
                    for child in self.children:
                        if child.role == role and child.process is not None:
                            child.process.join(timeout_s)
            deadline = time.monotonic() + timeout_s
            for child in self.children:
                if child.process is None:
                    continue
                child.process.join(max(0.0, deadline - time.monotonic()))
                if child.process.is_alive():
                    log.warning(
                        "kvlog %s did not stop in %.0f s; killing it", child.role, timeout_s
                    )
                    child.process.kill()
                    child.process.join(2)
            self.children = []
        if self._monitor is not None and not self._monitor.is_alive():
            for fd in self._wake:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._monitor = None
        metrics_stop.join()
        if self._lock_file is not None:
            # Only the lock's holder owns the run files: a start refused because another
            # kvlog holds the data dir must leave that one's processes.json alone.
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / STATUS_FILE).unlink()
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def reload_security(self) -> int:
        """Re-read the authorized-keys directory in every server process (SIGHUP; not the
        sweeper and console, which hold no keys)."""
        sent = 0
        with self._mutex:
            for child in self.children:
                if (
                    child.role not in ("sweeper", *OPTIONAL_ROLES)
                    and child.process is not None
                    and child.process.is_alive()
                ):
                    os.kill(child.process.pid, signal.SIGHUP)
                    sent += 1
        return sent

    def wait(self) -> None:
        """Block until :meth:`stop` is called (from a signal handler, say)."""
        while not self._stopping.wait(0.5):
            pass

    def processes(self) -> list[dict[str, Any]]:
        with self._mutex:
            return [c.status() for c in self.children]


__all__ = ["STATUS_FILE", "Broker", "Child", "read_status"]
