"""``kvlog serve`` (run a broker in the foreground) and ``kvlog status`` (what runs).

``kvlog serve`` runs :class:`kvlog.Broker` (the supervisor and its coordinator, node,
broker and sweeper processes) until SIGTERM or SIGINT, then stops every process within a
few seconds. SIGHUP (also sent by ``kvlog acls reload``) re-reads the authorized CURVE keys.

``--config FILE.toml`` may set the server settings below and any broker config key
(Kafka's dotted names; ``a.b = 1`` unquoted works too)::

    listen = "tcp://127.0.0.1:7092"      # kvlog's ZeroMQ wire
    kafka_listen = "127.0.0.1:9092"      # Kafka's wire ("none": off)
    data_dir = "/var/lib/kvlog"          # relative paths: relative to the file's directory
    log_dirs = ["/disk1/kvlog", "/disk2/kvlog"]
    curve_secret_key = "keys/server.key_secret"
    curve_authorized_keys = "keys/authorized"
    super_users = ["admin"]
    advertised_host = "10.0.0.5"
    kafka_advertised_host = "10.0.0.5"
    kafka_sasl_mechanisms = ["SCRAM-SHA-256", "SCRAM-SHA-512"]   # Kafka clients' logins
    kafka_ssl_certfile = "tls/server.pem"                         # TLS: SASL_SSL
    kafka_ssl_keyfile = "tls/server.key"
    kafka_ssl_cafile = "tls/ca.pem"                               # client certificates'
    kafka_ssl_client_auth = "none"                                # or requested, required
    log_level = "INFO"
    "group.initial.rebalance.delay.ms" = 0

Command-line flags override the file.
"""

from __future__ import annotations

import difflib
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from kvlog.config_def import format_default
from kvlog.errors import InvalidConfigError
from kvlog.workers.config import BROKER_CONFIG, LOG_LEVELS, SERVER_SETTINGS

from .common import Command, check_endpoint, flatten, read_toml

DEFAULT_DATA_DIR: str = SERVER_SETTINGS.default("data_dir")
DEFAULT_LISTEN: str = SERVER_SETTINGS.default("listen")
DEFAULT_KAFKA_LISTEN: str = SERVER_SETTINGS.default("kafka_listen")
STATUS_KEYS = ("role", "node_id", "pid", "endpoint", "kafka", "log_dir", "started_at")

# Server settings that name files: relative paths are relative to the config file.
_PATH_KEYS = (
    "data_dir",
    "curve_secret_key",
    "curve_authorized_keys",
    "kafka_ssl_certfile",
    "kafka_ssl_keyfile",
    "kafka_ssl_cafile",
)


def _help(name: str) -> str:
    """A flag's help: the server setting's doc and default, from the one table."""
    key = SERVER_SETTINGS[name]
    return f"{key.doc} [default: {format_default(key)}]"


def load_server_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(server settings, broker config) from a TOML file; unknown keys are an error
    naming the closest valid one. Relative paths become relative to the file."""
    server: dict[str, Any] = {}
    broker: dict[str, Any] = {}
    for key, value in flatten(read_toml(path)).items():
        name = key.replace("-", "_")
        setting = SERVER_SETTINGS.lookup(name)
        if setting is not None:
            try:
                value = setting.parse(value)
            except InvalidConfigError as exc:
                raise InvalidConfigError(f"{path}: {exc.message}") from None
            if name == "log_dirs":
                value = [str(path.parent / v) for v in value]
            elif name in _PATH_KEYS:
                value = str(path.parent / value)
            server[name] = value
        elif BROKER_CONFIG.lookup(key) is not None:
            broker[key] = value
        else:
            known = [*SERVER_SETTINGS, *BROKER_CONFIG]
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            raise InvalidConfigError(f"{path}: unknown key {key!r}{hint}")
    return server, broker


class _Starting(Exception):
    """Raised by a stop signal that arrives while the broker is still starting."""


@click.command(cls=Command)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=_help("data_dir"),
)
@click.option("--listen", default=None, help=_help("listen"))
@click.option(
    "--kafka-listen",
    default=None,
    metavar="HOST:PORT|none",
    help=_help("kafka_listen"),
)
@click.option(
    "--kafka-advertised-host",
    default=None,
    help=SERVER_SETTINGS["kafka_advertised_host"].doc,
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="TOML file with server settings and broker config keys (flags override it; "
    "every key: kvlog config docs).",
)
@click.option(
    "--log-dir",
    "log_dirs",
    multiple=True,
    type=click.Path(file_okay=False),
    help=SERVER_SETTINGS["log_dirs"].doc + " Repeat the flag for several.",
)
@click.option(
    "--curve-secret-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help=SERVER_SETTINGS["curve_secret_key"].doc,
)
@click.option(
    "--curve-authorized-keys",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help=SERVER_SETTINGS["curve_authorized_keys"].doc,
)
@click.option(
    "--super-user",
    "super_users",
    multiple=True,
    help=SERVER_SETTINGS["super_users"].doc + " Repeat the flag for several.",
)
@click.option(
    "--kafka-sasl-mechanisms",
    default=None,
    metavar="MECHANISM[,MECHANISM]",
    help=SERVER_SETTINGS["kafka_sasl_mechanisms"].doc,
)
@click.option(
    "--kafka-ssl-certfile",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help=SERVER_SETTINGS["kafka_ssl_certfile"].doc,
)
@click.option(
    "--kafka-ssl-keyfile",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help=SERVER_SETTINGS["kafka_ssl_keyfile"].doc,
)
@click.option(
    "--kafka-ssl-cafile",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help=SERVER_SETTINGS["kafka_ssl_cafile"].doc,
)
@click.option(
    "--kafka-ssl-client-auth",
    type=click.Choice(["none", "requested", "required"]),
    default=None,
    help=_help("kafka_ssl_client_auth"),
)
@click.option("--advertised-host", default=None, help=SERVER_SETTINGS["advertised_host"].doc)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default=None,
    help=_help("log_level"),
)
def serve(
    data_dir: Path | None,
    listen: str | None,
    kafka_listen: str | None,
    kafka_advertised_host: str | None,
    config_file: Path | None,
    log_dirs: tuple[str, ...],
    curve_secret_key: str | None,
    curve_authorized_keys: str | None,
    super_users: tuple[str, ...],
    kafka_sasl_mechanisms: str | None,
    kafka_ssl_certfile: str | None,
    kafka_ssl_keyfile: str | None,
    kafka_ssl_cafile: str | None,
    kafka_ssl_client_auth: str | None,
    advertised_host: str | None,
    log_level: str | None,
) -> None:
    """Run a kvlog broker in the foreground until SIGTERM or Ctrl-C.

    Prints both bootstrap addresses once every process is ready: the ZeroMQ one for
    kvlog's clients and the Kafka one for Kafka clients (kcat, kafka-python, librdkafka).
    SIGHUP (or `kvlog acls reload`) re-reads the authorized keys directory.
    """
    from kvlog.workers.supervisor import Broker

    server, broker_config = load_server_file(config_file) if config_file else ({}, {})
    flags: dict[str, Any] = {
        "data_dir": str(data_dir) if data_dir is not None else None,
        "listen": listen,
        "kafka_listen": kafka_listen,
        "kafka_advertised_host": kafka_advertised_host,
        "log_dirs": list(log_dirs) or None,
        "curve_secret_key": curve_secret_key,
        "curve_authorized_keys": curve_authorized_keys,
        "super_users": list(super_users) or None,
        "kafka_sasl_mechanisms": kafka_sasl_mechanisms,
        "kafka_ssl_certfile": kafka_ssl_certfile,
        "kafka_ssl_keyfile": kafka_ssl_keyfile,
        "kafka_ssl_cafile": kafka_ssl_cafile,
        "kafka_ssl_client_auth": kafka_ssl_client_auth,
        "advertised_host": advertised_host,
        "log_level": log_level,
    }
    settings = {**server, **{k: v for k, v in flags.items() if v is not None}}
    level = SERVER_SETTINGS["log_level"].parse(
        settings.get("log_level", SERVER_SETTINGS.default("log_level"))
    )
    listen_at = check_endpoint(settings.get("listen", DEFAULT_LISTEN), "listen")
    try:
        kafka_at = SERVER_SETTINGS["kafka_listen"].parse(
            settings.get("kafka_listen", DEFAULT_KAFKA_LISTEN)
        )
    except InvalidConfigError as exc:
        raise click.BadParameter(exc.message, param_hint="--kafka-listen") from None
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s supervisor[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    broker = Broker(
        settings.get("data_dir", DEFAULT_DATA_DIR),
        listen_at,
        log_dirs=settings.get("log_dirs"),
        config=broker_config,
        log_level=level,
        curve_secret_key=settings.get("curve_secret_key"),
        curve_authorized_keys=settings.get("curve_authorized_keys"),
        super_users=settings.get("super_users"),
        advertised_host=settings.get("advertised_host"),
        kafka_listen=kafka_at,
        kafka_advertised_host=settings.get("kafka_advertised_host"),
        kafka_sasl_mechanisms=settings.get("kafka_sasl_mechanisms"),
        kafka_ssl_certfile=settings.get("kafka_ssl_certfile"),
        kafka_ssl_keyfile=settings.get("kafka_ssl_keyfile"),
        kafka_ssl_cafile=settings.get("kafka_ssl_cafile"),
        kafka_ssl_client_auth=settings.get("kafka_ssl_client_auth") or "none",
    )
    stop = threading.Event()
    reload = threading.Event()
    starting = True

    def on_stop(signum: int, frame: Any) -> None:
        stop.set()
        if starting:
            raise _Starting

    def on_hup(signum: int, frame: Any) -> None:
        reload.set()

    old = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, on_stop),
        signal.SIGINT: signal.signal(signal.SIGINT, on_stop),
        signal.SIGHUP: signal.signal(signal.SIGHUP, on_hup),
    }
    try:
        try:
            broker.start()  # stops what it started if a signal interrupts it
        except _Starting:
            click.echo("kvlog: stopped during start-up", err=True)
            return
        starting = False
        if stop.is_set():
            return
        nodes = len(broker.log_dirs)
        security = "CURVE" if broker.security.enabled else "plaintext"
        click.echo(f"kvlog broker ready on {broker.bootstrap}")
        click.echo(f"  ZeroMQ bootstrap {broker.bootstrap}  (kvlog clients: --bootstrap-server)")
        click.echo(f"  Kafka bootstrap  {kafka_line(broker)}")
        click.echo(
            f"  data dir {broker.data_dir}, {nodes} node{'s' if nodes != 1 else ''}, "
            f"{security}; stop with Ctrl-C or SIGTERM, reload keys with SIGHUP",
        )
        sys.stdout.flush()
        while not stop.wait(0.2):
            if reload.is_set():
                reload.clear()
                sent = broker.reload_security()
                logging.getLogger("kvlog.serve").info(
                    "SIGHUP: asked %d process(es) to reload the authorized keys", sent
                )
    finally:
        starting = False
        try:
            broker.stop()
        finally:
            for signum, handler in old.items():
                signal.signal(signum, handler)
    click.echo("kvlog broker stopped", err=True)


def kafka_line(broker: Any) -> str:
    """The Kafka bootstrap address for humans, or why there is none."""
    if broker.kafka_bootstrap:
        protocol = broker.kafka_security_protocol
        return f"{broker.kafka_bootstrap}  (Kafka clients: bootstrap.servers, kcat -b; {protocol})"
    return f"off: {broker.kafka_off_reason or 'kafka_listen is none'}"


def status_entries(data_dir: Path) -> list[dict[str, Any]]:
    from kvlog.workers.supervisor import read_status

    return [{key: entry.get(key) for key in STATUS_KEYS} for entry in read_status(data_dir)]


def read_run_file(data_dir: Path) -> dict[str, Any]:
    """``<data_dir>/run/processes.json`` (supervisor_pid, bootstrap, processes) or {}."""
    from kvlog.workers.supervisor import STATUS_FILE

    try:
        data = json.loads((data_dir / "run" / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
