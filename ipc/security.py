"""CURVE keys and client-side socket security (ZeroMQ's CURVE via pyzmq's zmq.auth).

Keys are zmq.auth certificates: ``NAME.key`` holds the public key, ``NAME.key_secret``
both keys. ``kvlog keys generate NAME --dir DIR`` writes them with ``principal = NAME``
in their metadata; the server maps every authorized public key to that principal, which
ACLs then name. kvlog writes no cryptography of its own.

A client with ``security_protocol="curve"`` needs the server's public key
(``curve_server_key``: a path to its ``.key`` file or the Z85 string) and its own secret
key file (``curve_secret_key``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from kvlog.errors import InvalidConfigError

# pyzmq writes `name = value` in some versions and `name = "value"` in others.
_META_LINE = re.compile(r'^\s+([\w.-]+)\s*=\s*"?(.*?)"?\s*$')


@dataclass(frozen=True)
class CurveKeys:
    """A key pair (the secret may be absent for a public-only certificate)."""

    public: bytes
    secret: bytes | None
    principal: str


def generate_keys(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``DIR/NAME.key`` and ``DIR/NAME.key_secret`` with ``principal = NAME``."""
    if not re.fullmatch(r"[A-Za-z0-9._@-]{1,128}", name):
        raise InvalidConfigError(
            f"key name {name!r} must be 1-128 characters of letters, digits, '.', '_', '@', '-'"
        )
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(folder, name, metadata={"principal": name})
    os.chmod(secret, 0o600)
    _ensure_principal(Path(public), name)
    return Path(public), Path(secret)


def _ensure_principal(path: Path, name: str) -> None:
    """Put the principal into the public key file too (pyzmq writes it only into the
    secret one), so an authorized-keys directory of public files names its principals."""
    if certificate_metadata(path).get("principal") == name:
        return
    lines = path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip() == "curve")
    block = ["metadata", f'    principal = "{name}"']
    if any(line.strip() == "metadata" for line in lines):
        at = next(i for i, line in enumerate(lines) if line.strip() == "metadata") + 1
        block = [f'    principal = "{name}"']
    path.write_text("\n".join([*lines[:at], *block, *lines[at:]]) + "\n")


def certificate_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata`` section of a zmq.auth certificate file."""
    out: dict[str, str] = {}
    section = None
    for line in Path(path).read_text().splitlines():
        if line and not line[0].isspace():
            section = line.strip()
            continue
        match = _META_LINE.match(line)
        if match and section == "metadata":
            out[match.group(1)] = match.group(2)
    return out


def load_keys(path: str | os.PathLike[str]) -> CurveKeys:
    """Load a certificate file (public ``.key`` or ``.key_secret``)."""
    file = Path(path)
    if not file.is_file():
        raise InvalidConfigError(f"CURVE key file {file} does not exist")
    try:
        public, secret = zmq.auth.load_certificate(file)
    except Exception as exc:
        raise InvalidConfigError(f"{file} is not a zmq.auth certificate: {exc}") from exc
    stem = file.name.split(".key")[0]
    principal = certificate_metadata(file).get("principal") or stem
    return CurveKeys(public, secret, principal)


def server_public_key(spec: str) -> bytes:
    """``curve_server_key``: a path to the server's ``.key`` file, or its Z85 text."""
    if os.path.exists(spec):
        return load_keys(spec).public
    if len(spec) == 40:
        return spec.encode()
    raise InvalidConfigError(
        f"curve_server_key {spec!r} is neither a key file nor a 40-character Z85 public key"
    )


def client_socket_options(config: dict[str, Any]) -> dict[int, Any]:
    """ZeroMQ options for a client's DEALER sockets, from a resolved client config."""
    if config.get("security_protocol", "plaintext") != "curve":
        return {}
    server_key = config.get("curve_server_key")
    secret_file = config.get("curve_secret_key")
    if not server_key or not secret_file:
        raise InvalidConfigError(
            "security_protocol='curve' needs curve_server_key (the server's .key file or Z85 "
            "key) and curve_secret_key (this client's .key_secret file)"
        )
    keys = load_keys(secret_file)
    if keys.secret is None:
        raise InvalidConfigError(
            f"{secret_file} holds no secret key; pass the .key_secret file as curve_secret_key"
        )
    return {
        zmq.CURVE_SERVERKEY: server_public_key(server_key),
        zmq.CURVE_PUBLICKEY: keys.public,
        zmq.CURVE_SECRETKEY: keys.secret,
    }


def client_header_fields(config: dict[str, Any]) -> dict[str, Any]:
    """Fields every request of a client carries: ``as_principal`` when it acts for
    someone (only kvlog's own key may; PROTOCOL.md 1.4)."""
    acting = config.get("as_principal")
    return {"as_principal": acting} if acting else {}
