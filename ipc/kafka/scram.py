"""SCRAM (RFC 5802, 7677) for kvlog: salted credentials and the server's side of a login.

Sans-IO and free of Kafka's types, so the ``kvlog users`` command can salt a password
without loading the protocol codec. :func:`scram_credential` salts a password (the client
side of adding a user: the password never leaves it); :class:`ScramExchange` runs one
login on the server, with scramp doing the cryptography; :class:`DecoySalts` gives unknown
users a credential that looks like a real one (see :mod:`.sasl`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import scramp
from scramp.utils import ServerError

SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_SHA_512 = "SCRAM-SHA-512"
MECHANISMS = (SCRAM_SHA_256, SCRAM_SHA_512)
DEFAULT_ITERATIONS = 4096
MIN_ITERATIONS = 4096  # RFC 7677's recommendation; scramp's and Kafka's minimum
MAX_ITERATIONS = 16384  # Kafka's maximum


# -- credentials ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScramCredential:
    """What the server keeps of a SCRAM password (RFC 5802 section 3): never the password.
    Immutable; shared freely."""

    mechanism: str
    salt: bytes
    stored_key: bytes
    server_key: bytes
    iterations: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "mechanism": self.mechanism,
            "salt": self.salt,
            "stored_key": self.stored_key,
            "server_key": self.server_key,
            "iterations": self.iterations,
        }

    @classmethod
    def from_wire(cls, fields: dict[str, Any]) -> ScramCredential:
        """Raises ValueError for fields that are not a credential (of the wrong types too:
        ``bytes(32)`` would make 32 zero bytes of an integer)."""
        types = {
            "mechanism": str,
            "salt": bytes,
            "stored_key": bytes,
            "server_key": bytes,
            "iterations": int,
        }
        for name, kind in types.items():
            value = fields.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"a SCRAM credential's {name} must be {kind.__name__}")
        credential = cls(**{name: fields[name] for name in types})
        credential.check()
        return credential

    def check(self) -> None:
        """Raises ValueError unless this is a credential kvlog can verify logins with."""
        check_mechanism(self.mechanism)
        check_iterations(self.iterations)
        size = _digest_size(self.mechanism)
        if len(self.stored_key) != size or len(self.server_key) != size:
            raise ValueError(f"{self.mechanism} keys are {size} bytes")
        if len(self.salt) < 12:
            raise ValueError("a SCRAM salt is at least 12 bytes")


def check_mechanism(mechanism: str) -> None:
    if mechanism not in MECHANISMS:
        raise ValueError(f"SASL mechanism {mechanism!r}: kvlog serves {', '.join(MECHANISMS)}")


def check_iterations(iterations: int) -> None:
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(
            f"SCRAM iterations must be {MIN_ITERATIONS}..{MAX_ITERATIONS}, got {iterations}"
        )


def _digest_size(mechanism: str) -> int:
    return 32 if mechanism == SCRAM_SHA_256 else 64


def scram_credential(
    mechanism: str, password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> ScramCredential:
    """The salted credential of ``password`` (a fresh random salt unless one is given)."""
    check_mechanism(mechanism)
    check_iterations(iterations)
    try:
        salt, stored, server, count = scramp.ScramMechanism(mechanism).make_auth_info(
            password, iteration_count=iterations, salt=salt
        )
    except scramp.ScramException as exc:
        raise ValueError(f"cannot make a {mechanism} credential: {exc}") from None
    return ScramCredential(mechanism, salt, stored, server, count)


CredentialLookup = Callable[[str, str], "ScramCredential | None"]  # (mechanism, user)


class DecoySalts:
    """Credentials for users that do not exist, so that they cannot be told from real ones
    by what the server sends: the salt is a keyed hash of the user name (the same at every
    attempt and in every process holding ``key``), the keys match no password. Immutable."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def credential(self, mechanism: str, user: str) -> ScramCredential:
        seed = f"{mechanism}\0{user}".encode()
        salt = hmac.new(self._key, b"salt\0" + seed, hashlib.sha256).digest()
        keys = hmac.new(self._key, b"keys\0" + seed, hashlib.sha512).digest()
        size = _digest_size(mechanism)
        return ScramCredential(mechanism, salt, keys[:size], keys[-size:], DEFAULT_ITERATIONS)


class AuthenticationFailed(Exception):
    """A SCRAM step failed; ``reason`` is for the server's log only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ScramExchange:
    """One SCRAM login: client-first -> server-first, client-final -> server-final."""

    def __init__(
        self, mechanism: str, lookup: CredentialLookup, decoys: DecoySalts, nonce: str
    ) -> None:
        self.mechanism = mechanism
        self.user: str | None = None
        self.unknown = False
        self._lookup = lookup
        self._decoys = decoys
        self._server = scramp.ScramMechanism(mechanism).make_server(self._auth, s_nonce=nonce)
        self._server_nonce = nonce
        self._step = 0

    def _auth(self, user: str) -> tuple[bytes, bytes, bytes, int]:
        self.user = user
        credential = self._lookup(self.mechanism, user)
        if credential is None:
            self.unknown = True
            credential = self._decoys.credential(self.mechanism, user)
        return credential.salt, credential.stored_key, credential.server_key, credential.iterations

    def step(self, token: bytes) -> bytes:
        """The server's answer to the client's next message; raises AuthenticationFailed."""
        try:
            message = bytes(token).decode("utf-8")
        except UnicodeDecodeError:
            raise AuthenticationFailed("a SCRAM message that is not UTF-8") from None
        try:
            if self._step == 0:
                self._step = 1
                # scramp refuses any authorization id (``a=`` in the GS2 header): Kafka
                # allows only the user name there, and its clients send none.
                self._server.set_client_first(message)
                return self._server.get_server_first().encode()
            if self._step == 1:
                self._step = 2
                self._accept_doubled_nonce(message)
                self._server.set_client_final(message)
                if self.unknown:  # the decoy's keys match nothing; say so plainly anyway
                    raise AuthenticationFailed(f"unknown user {self.user!r}")
                return self._server.get_server_final().encode()
        except scramp.ScramException as exc:
            proof = exc.server_error is ServerError.INVALID_PROOF
            what = "wrong password" if proof else str(exc)
            if self.unknown:
                what = "unknown user"
            raise AuthenticationFailed(f"{what} (user {self.user!r})") from None
        raise AuthenticationFailed("a SCRAM message after the exchange ended")

    @property
    def done(self) -> bool:
        return self._step == 2

    def _accept_doubled_nonce(self, client_final: str) -> None:
        """librdkafka before 2.6.1 (librdkafka#4895; Debian's kcat links 2.0.2) echoes its
        own nonce followed by the server-first's whole nonce, its own included again.
        Kafka 3.x accepts any echo that ends with the server-first nonce (its fix for
        CVE-2024-56128 kept ``endsWith`` for those clients); kvlog accepts exactly that
        one shape. The proof still covers the message as sent and the fresh server
        nonce, so nothing is replayable; any other mismatch fails as scramp decides."""
        combined = str(self._server.nonce)
        client_nonce = combined[: -len(self._server_nonce)]
        echoed = next((f[2:] for f in client_final.split(",") if f.startswith("r=")), None)
        if echoed == client_nonce + combined:
            self._server.nonce = scramp.core.Nonce(echoed)


def failure_message(mechanism: str) -> str:
    """What a client whose login failed is told (Kafka's words), whatever the reason."""
    return (
        "Authentication failed during authentication due to invalid credentials with SASL "
        f"mechanism {mechanism}"
    )
