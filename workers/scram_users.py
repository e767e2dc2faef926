"""SCRAM users: the salted credentials Kafka clients log in with. Pure logic plus storage.

A user has one credential per SCRAM mechanism (SCRAM-SHA-256, SCRAM-SHA-512): salt,
stored key, server key and iteration count (RFC 5802), computed by the client that adds
the user (``kvlog users add``), so no password ever reaches kvlog. The user name is the
principal the ACLs and quotas name, the same namespace as CURVE key names: a user called
like a super user is one. Names kvlog reserves (its own processes' principal, Kafka's
unauthenticated one, the ACL wildcard) are refused.

Credentials live in the coordinator's store (table ``scram_users``) beside the ACLs, with
a version that grows on each change; every server process opens that store read-only and
reloads them when the version moves (``ServerSecurity.refresh_acls``), so a removed user
cannot log in to any listener a moment later.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import cbor2
from scramp.utils import saslprep

from kvlog.errors import InvalidRequestError
from kvlog.ipc.kafka.scram import ScramCredential
from kvlog.log import ReadTxn, WriteTxn

from .acl import CONTROLLER_TABLE, RESERVED_PRINCIPALS

log = logging.getLogger(__name__)

USERS_TABLE = "scram_users"
USERS_VERSION_KEY = b"scram_users_version"
MAX_NAME_LENGTH = 1024

Credentials = dict[tuple[str, str], ScramCredential]  # (mechanism, user) -> credential


@dataclass(frozen=True, slots=True)
class UserEntry:
    """A user as ``kvlog users list`` shows it: its mechanisms and their iterations."""

    name: str
    iterations: dict[str, int] = field(default_factory=dict)  # mechanism -> iterations


def check_user_name(name: str) -> str:
    """``name`` if kvlog accepts it as a SCRAM user; raises InvalidRequestError."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidRequestError(f"a user name is 1-{MAX_NAME_LENGTH} characters")
    if name in RESERVED_PRINCIPALS:
        raise InvalidRequestError(f"user name {name!r} is reserved by kvlog; choose another")
    try:
        prepared = saslprep(name)
    except Exception:  # scramp raises its own type for prohibited characters
        prepared = None
    if prepared != name:
        # Clients send their name through SASLprep (RFC 4013): a name it changes could
        # never log in.
        raise InvalidRequestError(
            f"user name {name!r} is not in SASLprep form (no control characters, "
            "normalized Unicode)"
        )
    return name


def _key(user: str, mechanism: str) -> bytes:
    return cbor2.dumps([user, mechanism])


def users_version(r: ReadTxn) -> int:
    raw = r.get(CONTROLLER_TABLE, USERS_VERSION_KEY)
    return int(raw) if raw else 0


def _bump(w: WriteTxn) -> None:
    w.put(CONTROLLER_TABLE, USERS_VERSION_KEY, str(users_version(w) + 1).encode())


def load_credentials(r: ReadTxn) -> Credentials:
    out: Credentials = {}
    for key, value in r.items(USERS_TABLE):
        try:
            user, mechanism = cbor2.loads(key)
            out[(mechanism, user)] = ScramCredential.from_wire(cbor2.loads(value))
        except (ValueError, TypeError, cbor2.CBORDecodeError) as exc:  # never stored so
            log.warning("skipping a stored SCRAM credential that does not decode: %s", exc)
    return out


def list_users(r: ReadTxn) -> list[UserEntry]:
    users: dict[str, dict[str, int]] = {}
    for (mechanism, user), credential in load_credentials(r).items():
        users.setdefault(user, {})[mechanism] = credential.iterations
    return [UserEntry(name, dict(sorted(users[name].items()))) for name in sorted(users)]


def put_credentials(w: WriteTxn, user: str, credentials: Iterable[ScramCredential]) -> bool:
    """Add or replace ``user``'s credentials for their mechanisms (others it has stay);
    returns whether the user is new."""
    new = not any(True for _ in w.items(USERS_TABLE, _user_prefix(user)))
    for credential in credentials:
        w.put(USERS_TABLE, _key(user, credential.mechanism), cbor2.dumps(credential.to_wire()))
    _bump(w)
    return new


def remove_user(w: WriteTxn, user: str) -> list[str]:
    """Remove every credential of ``user``; returns the mechanisms it had."""
    keys = [key for key, _ in w.items(USERS_TABLE, _user_prefix(user))]
    gone = []
    for key in keys:
        name, mechanism = cbor2.loads(key)
        if name == user:  # the prefix is a CBOR array head and the name: exact anyway
            w.delete(USERS_TABLE, key)
            gone.append(mechanism)
    if gone:
        _bump(w)
    return sorted(gone)


def _user_prefix(user: str) -> bytes:
    # cbor2.dumps([user, mechanism]) starts with the array head and the encoded name.
    return cbor2.dumps([user, ""])[:-1]
