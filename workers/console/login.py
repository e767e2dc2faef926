"""Logging in to the web console while security is on: passwords checked against the
broker's SCRAM users, and signed session cookies.

A password is checked as a SCRAM server checks a client's proof (RFC 5802): salt it with
the stored salt and iteration count (PBKDF2), derive the client key, and compare its hash
with the stored key in constant time. The store (the coordinator's ``meta`` log dir,
read-only, as every server process reads it) keeps only salted keys (``kvlog users``),
never the password, and the console keeps nothing of it either. An unknown user is salted
against a decoy credential first, so it costs the same time and gets the same answer as a
wrong password.

A session is a cookie ``base64(user, expiry, session id) . HMAC-SHA256`` keyed by a secret
derived from the server's CURVE secret key (a console restart keeps sessions; nobody without
the server's key can forge one), HttpOnly, SameSite=Strict, and expiring. A session whose
user has since been removed (``kvlog users remove``) is refused at its next request. Logout
revokes the session on the server too (:class:`RevokedSessions`, kept in the data dir until
the session would have expired), so a copy of the cookie taken before the logout is
refused as well.

:class:`Logins` is owned by the console process and safe from any thread: the credential
snapshot is replaced whole under a lock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from pathlib import Path

from kvlog.errors import KvlogError
from kvlog.ipc.kafka.scram import MECHANISMS, DecoySalts, ScramCredential
from kvlog.lmdb_store import LogDir

from ..scram_users import Credentials, load_credentials, users_version

SESSION_COOKIE = "kvlog_session"
SESSION_TTL_S = 8 * 3600
WRONG_LOGIN = "wrong user name or password"  # the same words for an unknown user


def password_matches(credential: ScramCredential, password: str) -> bool:
    """RFC 5802's proof check, made from the password instead of a client's proof."""
    digest = "sha256" if credential.mechanism == "SCRAM-SHA-256" else "sha512"
    salted = hashlib.pbkdf2_hmac(digest, password.encode(), credential.salt, credential.iterations)
    client_key = hmac.new(salted, b"Client Key", digest).digest()
    stored_key = hashlib.new(digest, client_key).digest()
    return hmac.compare_digest(stored_key, credential.stored_key)


class FailedLogins:
    """Failed logins per user name over the last ``window_s``: past ``limit`` the console
    refuses that name's logins (429) until the window moves on, so a password cannot be
    guessed at the speed of PBKDF2. Owned by :class:`Logins`; used under its lock."""

    def __init__(self, limit: int = 10, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, list[float]] = {}

    def _recent(self, user: str, now_s: float) -> list[float]:
        kept = [t for t in self._failures.get(user, []) if now_s - t < self.window_s]
        if kept:
            self._failures[user] = kept
        else:
            self._failures.pop(user, None)
        return kept

    def locked(self, user: str, now_s: float) -> bool:
        return len(self._recent(user, now_s)) >= self.limit

    def failed(self, user: str, now_s: float) -> None:
        self._failures[user] = [*self._recent(user, now_s), now_s]


class Logins:
    """The SCRAM users (re-read when their version moves) and the session signer."""

    def __init__(
        self, meta_path: Path, server_secret: bytes, revoked_path: Path | None = None
    ) -> None:
        self.meta_path = meta_path
        self.revoked = RevokedSessions(revoked_path)
        self._key = hmac.new(server_secret, b"kvlog console sessions", hashlib.sha256).digest()
        self._decoys = DecoySalts(
            hmac.new(server_secret, b"kvlog scram decoys", hashlib.sha256).digest()
        )
        self._lock = threading.Lock()
        self._meta: LogDir | None = None
        self._version = -1
        self._credentials: Credentials = {}
        self.failures = FailedLogins()

    def _refresh(self) -> Credentials:
        with self._lock:
            try:
                if self._meta is None:
                    self._meta = LogDir(self.meta_path, readonly=True)
                with self._meta.reader() as r:
                    version = users_version(r)
                    if version != self._version:
                        self._credentials = load_credentials(r)
                        self._version = version
            except KvlogError:
                pass  # the coordinator has not created the store yet: no users
            return self._credentials

    def user_exists(self, user: str) -> bool:
        return any(name == user for _, name in self._refresh())

    def locked_out(self, user: str, now_s: float | None = None) -> bool:
        """Too many failed logins for ``user`` lately (see :class:`FailedLogins`)."""
        with self._lock:
            return self.failures.locked(user, time.monotonic() if now_s is None else now_s)

    def check_password(self, user: str, password: str, now_s: float | None = None) -> bool:
        credentials = self._refresh()
        matched = False
        for mechanism in MECHANISMS:
            found = credentials.get((mechanism, user))
            if found is not None:
                matched = password_matches(found, password)
                break
        else:  # the same cost for a user that does not exist
            password_matches(self._decoys.credential(MECHANISMS[0], user), password)
        if not matched:
            with self._lock:
                self.failures.failed(user, time.monotonic() if now_s is None else now_s)
        return matched

    # -- sessions ---------------------------------------------------------------------------

    def session_cookie(self, user: str, now_s: float | None = None) -> str:
        expires = int((time.time() if now_s is None else now_s) + SESSION_TTL_S)
        session = [user, expires, secrets.token_hex(16)]
        body = base64.urlsafe_b64encode(json.dumps(session).encode()).decode()
        return f"{body}.{self._sign(body)}"

    def _session(self, cookie: str | None, now_s: float) -> tuple[str, int, str] | None:
        """A cookie's (user, expiry, session id) if this server signed it and it is
        unexpired; else None."""
        if not cookie or "." not in cookie:
            return None
        body, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            user, expires, session_id = json.loads(base64.urlsafe_b64decode(body.encode()))
        except (ValueError, TypeError):  # also a cookie of the old (user, expiry) shape
            return None
        if not (isinstance(user, str) and isinstance(expires, int) and isinstance(session_id, str)):
            return None
        return (user, expires, session_id) if expires >= now_s else None

    def session_user(self, cookie: str | None, now_s: float | None = None) -> str | None:
        """The user of a valid, unexpired, unrevoked session whose user still exists;
        else None."""
        now = time.time() if now_s is None else now_s
        session = self._session(cookie, now)
        if session is None:
            return None
        user, expires, session_id = session
        if self.revoked.contains(session_id, expires) or not self.user_exists(user):
            return None
        return user

    def revoke(self, cookie: str | None, now_s: float | None = None) -> str | None:
        """Logout: the session is refused from now on, whoever presents it. Returns its
        user (None for no valid session: nothing to revoke)."""
        now = time.time() if now_s is None else now_s
        session = self._session(cookie, now)
        if session is None:
            return None
        user, expires, session_id = session
        self.revoked.add(session_id, expires, now)
        return user

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def close(self) -> None:
        with self._lock:
            if self._meta is not None:
                self._meta.close()
                self._meta = None


class RevokedSessions:
    """Session ids logged out before their expiry, each kept until that expiry (a signed
    cookie would be valid until then). Written through to ``path`` (a JSON map, replaced
    atomically and fsync'd) so a console restart keeps them; ``path`` None keeps them in
    memory only. Safe from any thread."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._expiry: dict[str, int] = {}
        if path is not None:
            try:
                loaded = json.loads(path.read_text())
                self._expiry = {str(k): int(v) for k, v in loaded.items() if isinstance(v, int)}
            except FileNotFoundError:
                pass
            except (ValueError, AttributeError, OSError):
                # Unreadable: refuse every session issued before it was last written (it
                # may have named any of them; fail closed). Later logins work.
                self._expiring_before = int(path.stat().st_mtime) + SESSION_TTL_S
                return
        self._expiring_before = 0.0

    def contains(self, session_id: str, expires: int) -> bool:
        with self._lock:
            return session_id in self._expiry or expires < self._expiring_before

    def add(self, session_id: str, expires: int, now_s: float) -> None:
        with self._lock:
            self._expiry = {k: v for k, v in self._expiry.items() if v >= now_s}
            self._expiry[session_id] = expires
            if self.path is not None:
                tmp = self.path.with_suffix(".tmp")
                with open(tmp, "w") as f:
                    json.dump(self._expiry, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
