"""Server-side security for every kvlog process: CURVE sockets, principals, ACLs and the
SCRAM credentials Kafka clients log in with.

Each server process (broker, nodes, coordinator) runs pyzmq's ZAP authenticator in a
thread: a client gets past the CURVE handshake only if its public key is in the
authorized-keys directory (or is kvlog's own server key, which its processes use to talk
to each other). The authenticator maps the key to its principal (the ``principal``
metadata of the key file, else the file name); the server reads it from each message's
``User-Id`` and checks the op against the ACLs (:mod:`workers.acl`). Refused keys are
logged. The authorized directory is re-read on SIGHUP and on ``kvlog acls reload``.

The ACLs and the SCRAM users (:mod:`workers.scram_users`) are read from the coordinator's
store whenever their versions move (the loop asks every 0.2 s); the process's Kafka
listener looks logins up in that snapshot (:meth:`ServerSecurity.scram_credential`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from kvlog.errors import InvalidConfigError, KvlogError
from kvlog.ipc.kafka.scram import DecoySalts, ScramCredential
from kvlog.ipc.security import load_keys
from kvlog.lmdb_store import LogDir

from .acl import INTERNAL_PRINCIPAL, Authorizer, acl_version, load_acls
from .scram_users import Credentials, load_credentials, users_version

log = logging.getLogger(__name__)

ZAP_DOMAIN = b"kvlog"


@dataclass
class SecuritySettings:
    """Picklable: handed to each spawned process."""

    server_secret_key: str | None = None
    authorized_keys: str | None = None
    super_users: list[str] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.server_secret_key is not None

    def validate(self) -> None:
        if not self.enabled:
            if self.authorized_keys:
                raise InvalidConfigError(
                    "--curve-authorized-keys needs --curve-secret-key (the server's key)"
                )
            return
        keys = load_keys(self.server_secret_key or "")
        if keys.secret is None:
            raise InvalidConfigError(
                f"{self.server_secret_key} holds no secret key: pass the server's .key_secret"
            )
        if not self.authorized_keys:
            raise InvalidConfigError(
                "--curve-secret-key needs --curve-authorized-keys DIR: the directory of the "
                "client public keys (.key files) allowed in"
            )
        if not Path(self.authorized_keys).is_dir():
            raise InvalidConfigError(
                f"--curve-authorized-keys {self.authorized_keys} is not a directory of client "
                ".key files"
            )


class _Authenticator(ThreadAuthenticator):
    """zmq.auth's ZAP handler with kvlog's key -> principal map."""

    def __init__(self, ctx: zmq.Context[Any], security: ServerSecurity) -> None:
        super().__init__(ctx, log=logging.getLogger("kvlog.zap"))
        self.security = security

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.security.principals.get(z85.encode(client_public_key), "unknown")


class ServerSecurity:
    """One per server process; owned by its loop (the ZAP thread only reads the maps)."""

    def __init__(self, ctx: zmq.Context[Any], settings: SecuritySettings, meta_path: Path) -> None:
        self.settings = settings
        self.server_keys = load_keys(settings.server_secret_key or "")
        self.principals: dict[bytes, str] = {}
        self._refused_logged: dict[bytes, float] = {}
        self.meta_path = meta_path
        self._meta: LogDir | None = None
        self._acl_version = -1
        self.authorizer = Authorizer([], settings.super_users)
        self._users_version = -1
        self.credentials: Credentials = {}
        self.scram_users: frozenset[str] = frozenset()
        # Unknown SCRAM users get decoy salts keyed by a secret every process shares.
        self.decoys = DecoySalts(
            hmac.new(self.server_keys.secret or b"", b"kvlog scram decoys", hashlib.sha256).digest()
        )
        self.auth = _Authenticator(ctx, self)
        self.auth.start()
        self.reload_keys()

    # -- keys -----------------------------------------------------------------------------

    def reload_keys(self) -> int:
        """Re-read the authorized-keys directory (SIGHUP, ``kvlog acls reload``)."""
        # zmq.auth certificates hold Z85 text, the form ZAP hands to the callback too.
        principals = {self.server_keys.public: INTERNAL_PRINCIPAL}
        folder = Path(self.settings.authorized_keys or "")
        for path in sorted(folder.glob("*.key")):
            try:
                keys = load_keys(path)
            except KvlogError as exc:
                log.warning("skipping authorized key %s: %s", path, exc.message)
                continue
            principals[keys.public] = keys.principal
        self.principals = principals
        self._authorized = set(principals.values())
        self.auth.configure_curve_callback(domain=ZAP_DOMAIN.decode(), credentials_provider=self)
        log.info("authorized %d client key(s) from %s", len(principals) - 1, folder)
        return len(principals) - 1

    def callback(self, domain: str, encoded: bytes) -> bool:
        """zmq.auth's credentials provider: is this (Z85-encoded) public key allowed in?"""
        if encoded in self.principals:
            return True
        now = time.monotonic()
        if now - self._refused_logged.get(encoded, 0.0) > 10.0:  # one line per key per 10 s
            self._refused_logged[encoded] = now
            log.warning(
                "refused a client with CURVE key %s: not in %s",
                encoded.decode(),
                self.settings.authorized_keys,
            )
        return False

    def still_authorized(self, principal: str) -> bool:
        """False for a principal whose every key was removed since its handshake."""
        return principal in self._authorized

    # -- sockets ---------------------------------------------------------------------------

    def secure_server(self, sock: zmq.Socket[Any]) -> None:
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.server_keys.secret or b"")
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.server_keys.public)

    def client_options(self) -> dict[int, Any]:
        """How this process connects to the other kvlog processes (as kvlog-internal)."""
        return client_options_for(self.server_keys.public, self.server_keys.secret or b"")

    # -- ACLs --------------------------------------------------------------------------------

    def refresh_acls(self, store: LogDir | None = None) -> None:
        """Reload the ACLs and the SCRAM users whose version moved (cheap when neither
        did)."""
        if store is None:
            if self._meta is None:
                try:
                    self._meta = LogDir(self.meta_path, readonly=True)
                except KvlogError:
                    return  # the coordinator has not created it yet
            store = self._meta
        with store.reader() as r:
            version = acl_version(r)
            entries = load_acls(r) if version != self._acl_version else None
            users = users_version(r)
            credentials = load_credentials(r) if users != self._users_version else None
        if entries is not None:
            self._acl_version = version
            self.authorizer = Authorizer(entries, self.settings.super_users)
            log.info("loaded %d ACL(s) (version %d)", len(entries), version)
        if credentials is not None:
            self._users_version = users
            self.credentials = credentials
            self.scram_users = frozenset(user for _, user in credentials)
            log.info("loaded %d SCRAM user(s) (version %d)", len(self.scram_users), users)

    # -- SCRAM logins (the Kafka listener's lookups) -----------------------------------------

    def scram_credential(self, mechanism: str, user: str) -> ScramCredential | None:
        return self.credentials.get((mechanism, user))

    def scram_user_exists(self, user: str) -> bool:
        return user in self.scram_users

    def close(self) -> None:
        self.auth.stop()
        if self._meta is not None:
            self._meta.close()


def client_options_for(server_public: bytes, secret: bytes) -> dict[int, Any]:
    public = zmq.curve_public(secret)
    return {
        zmq.CURVE_SERVERKEY: server_public,
        zmq.CURVE_PUBLICKEY: public,
        zmq.CURVE_SECRETKEY: secret,
    }
