"""TLS for a Kafka listener's connections, sans-IO: the stdlib's ``ssl`` over memory BIOs.

OpenSSL never touches the socket: the listener reads ciphertext from the socket as it
reads plaintext on a PLAINTEXT listener and hands it to :meth:`TlsSession.receive`, which
returns the plaintext it decrypted (and advances the handshake); responses go through
:meth:`TlsSession.encrypt` and the ciphertext it returns is written like any response
bytes. So the listener keeps one non-blocking loop for both, and TLS cannot leave
decrypted bytes waiting inside OpenSSL where the selector would not see them: every
``receive`` drains all the plaintext its input completes.

Also here: the server context from the ``kafka_ssl_*`` settings, and the principal a
client certificate maps to (its subject's CN, see :func:`certificate_principal`).
"""

from __future__ import annotations

import ssl
from typing import Any

from kvlog.errors import InvalidConfigError

CLIENT_AUTH = {
    "none": ssl.CERT_NONE,
    "requested": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
_READ_CHUNK = 256 * 1024
_RECORD = 16 * 1024


class TlsError(Exception):
    """The peer broke TLS (a failed handshake, a bad record); the connection must close."""


class TlsSession:
    """One connection's TLS state. Owned by the listener's loop with its connection; not
    thread-safe."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.handshake_done = False
        self.closed_by_peer = False  # close_notify received

    def receive(self, ciphertext: Any) -> list[bytes]:
        """Feed bytes read from the socket; returns the plaintext they complete (possibly
        none). Raises TlsError. Call :meth:`pending_output` afterwards: the handshake
        answers from inside this call."""
        self._incoming.write(ciphertext)
        try:
            if not self.handshake_done:
                try:
                    self._tls.do_handshake()
                except ssl.SSLWantReadError:
                    return []
                self.handshake_done = True
            out = []
            while True:
                try:
                    chunk = self._tls.read(_READ_CHUNK)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    self.closed_by_peer = True
                    break
                if not chunk:
                    break
                out.append(chunk)
            return out
        except ssl.SSLError as exc:
            raise TlsError(_describe(exc)) from None

    def encrypt(self, plaintext: list[Any]) -> bytes:
        """The ciphertext of ``plaintext`` (responses), with whatever TLS had to say."""
        try:
            # One write per response part would make one TLS record each (a Fetch has
            # many small parts): gather them into records of up to 16 KiB, TLS's size.
            pending = bytearray()
            for buf in plaintext:
                pending += memoryview(buf).cast("B")
                if len(pending) >= _RECORD:
                    self._tls.write(pending)
                    pending.clear()
            if pending:
                self._tls.write(pending)
        except ssl.SSLError as exc:
            raise TlsError(_describe(exc)) from None
        return self._outgoing.read()

    def pending_output(self) -> bytes:
        """Ciphertext TLS produced by itself (handshake messages, session tickets)."""
        return self._outgoing.read()

    def peer_certificate(self) -> dict[str, Any] | None:
        """The client's verified certificate (None: it sent none)."""
        cert = self._tls.getpeercert()
        return cert or None

    @property
    def version(self) -> str | None:
        return self._tls.version()


def _describe(exc: ssl.SSLError) -> str:
    reason = getattr(exc, "reason", None)
    return f"TLS: {reason or exc}"


def server_context(
    certfile: str, keyfile: str | None, cafile: str | None, client_auth: str
) -> ssl.SSLContext:
    """The Kafka listeners' server context (TLS 1.2 or newer). Raises InvalidConfigError
    naming the setting whose file does not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidConfigError(
            f"kafka_ssl_certfile {certfile}"
            + (f" / kafka_ssl_keyfile {keyfile}" if keyfile else "")
            + f" does not load as a PEM certificate and its private key: {exc}"
        ) from None
    if cafile is not None:
        try:
            context.load_verify_locations(cafile)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidConfigError(
                f"kafka_ssl_cafile {cafile} does not load as PEM CA certificates: {exc}"
            ) from None
    context.verify_mode = CLIENT_AUTH[client_auth]
    return context


def certificate_principal(cert: dict[str, Any]) -> str | None:
    """The principal of a verified client certificate: its subject's common name (CN),
    as Kafka's ``ssl.principal.mapping.rules = RULE:^CN=([^,]+).*$/$1/`` gives it, so a
    certificate for ``CN=alice,O=Example`` is principal ``alice``, the name ACLs, quotas,
    CURVE keys and SCRAM users share. None: the subject has no CN."""
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value:
                return str(value)
    return None
