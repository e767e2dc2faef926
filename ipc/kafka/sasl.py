"""SASL on Kafka's wire, sans-IO: SaslHandshake, SaslAuthenticate and SCRAM (RFC 5802, 7677).

Theory of operation. A connection on a SASL listener starts unauthenticated; its
:class:`SaslServer` sees every request before any handler does and answers with a
decision the driver (the listener) carries out: :class:`Respond` (send this response;
maybe close after it, maybe the login is complete), :class:`Refuse` (close, no response),
or :data:`PASS` (not a SASL matter: dispatch the request as usual). The states are
Kafka's (``SaslServerAuthenticator``)::

    HANDSHAKE    ApiVersions: PASS.  SaslHandshake v1, mechanism enabled: -> AUTHENTICATE;
                 v0: -> RAW.  Mechanism not enabled: UNSUPPORTED_SASL_MECHANISM, close.
                 SaslAuthenticate: ILLEGAL_SASL_STATE, close.  Anything else: close.
    AUTHENTICATE SaslAuthenticate: one SCRAM step; after the client's final message
                 -> DONE (the principal is the user name).  A failed step:
                 SASL_AUTHENTICATION_FAILED with a message, close.  Anything else: close.
    RAW          (handshake v0, clients of Kafka 0.10) the next frames are bare SASL tokens
                 without Kafka's request header (:meth:`on_raw_token`); a failure closes
                 without a response, as Kafka does.
    DONE         SASL requests: ILLEGAL_SASL_STATE (kvlog offers no re-authentication:
                 SaslAuthenticate v1 answers session_lifetime_ms 0).  Everything else: PASS.

An unknown user and a wrong password look the same to the client: an unknown user gets a
decoy credential (a salt derived from the user name with a server secret, so it is stable
like a real one, and keys nothing can match), the exchange runs to the client's proof, and
both fail with the same message. Only the server's log says which it was.

Nothing here touches a socket, a clock or a store: credentials come from the ``lookup``
callable the driver gives (the current snapshot of kvlog's stored credentials), the
server nonce from ``nonce``.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvlog.errors import ErrorCode

from .codec import ApiKey, response_class
from .connection import KafkaRequest
from .scram import (
    AuthenticationFailed,
    CredentialLookup,
    DecoySalts,
    ScramExchange,
    check_mechanism,
    failure_message,
)

SASL_APIS = frozenset((ApiKey.SaslHandshake, ApiKey.SaslAuthenticate))
# Kafka's sasl.server.max.receive.size: the largest frame a connection may send before it
# has authenticated (an unauthenticated peer must not make the broker hold 100 MiB).
MAX_UNAUTHENTICATED_BYTES = 512 * 1024

_Handshake = response_class(ApiKey.SaslHandshake)
_Authenticate = response_class(ApiKey.SaslAuthenticate)


# -- the driver's decisions ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Respond:
    """Send ``response`` (a kafka.protocol response; bare token bytes in RAW). Then close
    when ``close_reason`` is set; ``principal`` is set when this completes the login;
    ``raw_tokens`` says whether the frames after this one are bare SASL tokens."""

    response: Any
    close_reason: str | None = None
    principal: str | None = None
    raw_tokens: bool = False


@dataclass(frozen=True, slots=True)
class Refuse:
    """Close the connection without a response."""

    reason: str


class _Pass:
    def __repr__(self) -> str:
        return "PASS"


PASS: Any = _Pass()  # not a SASL matter: dispatch the request as usual

Decision = Respond | Refuse | _Pass


class State(enum.Enum):
    HANDSHAKE = "handshake"
    AUTHENTICATE = "authenticate"
    RAW = "raw"
    DONE = "done"
    FAILED = "failed"


def illegal_state(request: KafkaRequest, message: str) -> Any:
    """ILLEGAL_SASL_STATE for a SASL request on a connection not expecting one (a listener
    without SASL answers this way, as Kafka does)."""
    code = int(ErrorCode.ILLEGAL_SASL_STATE)
    if request.api_key == ApiKey.SaslHandshake:
        return _Handshake(error_code=code, mechanisms=[])
    return _Authenticate(
        error_code=code, error_message=message, auth_bytes=b"", session_lifetime_ms=0
    )


class SaslServer:
    """The SASL side of one connection. Owned by the listener's loop, with the connection;
    not thread-safe."""

    def __init__(
        self,
        mechanisms: Sequence[str],
        lookup: CredentialLookup,
        decoys: DecoySalts,
        *,
        nonce: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        for mechanism in mechanisms:
            check_mechanism(mechanism)
        self.mechanisms = list(mechanisms)
        self.state = State.HANDSHAKE
        self.principal: str | None = None
        self.mechanism: str | None = None
        self.failure: str | None = None  # why the login failed (for the server's log)
        self._lookup = lookup
        self._decoys = decoys
        self._nonce = nonce
        self._exchange: ScramExchange | None = None

    @property
    def authenticated(self) -> bool:
        return self.state is State.DONE

    def on_request(self, request: KafkaRequest) -> Decision:
        """What to do with ``request`` (see the module's table of states)."""
        api, state = request.api_key, self.state
        if state is State.DONE:
            if api in SASL_APIS:
                return Respond(illegal_state(request, "this connection is authenticated"))
            return PASS
        if state is State.HANDSHAKE:
            if api == ApiKey.ApiVersions:
                return PASS
            if api == ApiKey.SaslHandshake:
                return self._handshake(request)
            if api == ApiKey.SaslAuthenticate:
                self.state = State.FAILED
                reason = "SaslAuthenticate before SaslHandshake"
                return Respond(illegal_state(request, reason), close_reason=reason)
            return self._refuse(f"{request.api_name} before SASL authentication")
        if state is State.AUTHENTICATE and api == ApiKey.SaslAuthenticate:
            return self._authenticate(request)
        return self._refuse(f"{request.api_name} during SASL authentication ({state.value})")

    def on_raw_token(self, token: bytes) -> Respond | Refuse:
        """A bare SASL token (after SaslHandshake v0)."""
        if self.state is not State.RAW or self._exchange is None:
            return self._refuse("a bare SASL token outside a v0 handshake")
        try:
            answer = self._exchange.step(token)
        except AuthenticationFailed as exc:
            return self._fail(exc.reason)
        if self._exchange.done:
            return Respond(answer, principal=self._complete())
        return Respond(answer, raw_tokens=True)

    # -- steps ---------------------------------------------------------------------------

    def _handshake(self, request: KafkaRequest) -> Respond:
        mechanism = request.body.mechanism
        if mechanism not in self.mechanisms:
            self.state = State.FAILED
            response = _Handshake(
                error_code=int(ErrorCode.UNSUPPORTED_SASL_MECHANISM), mechanisms=self.mechanisms
            )
            reason = f"SASL mechanism {mechanism!r} is not enabled ({', '.join(self.mechanisms)})"
            self.failure = reason
            return Respond(response, close_reason=reason)
        self.mechanism = mechanism
        self._exchange = ScramExchange(mechanism, self._lookup, self._decoys, self._nonce())
        raw = request.api_version == 0
        self.state = State.RAW if raw else State.AUTHENTICATE
        return Respond(_Handshake(error_code=0, mechanisms=self.mechanisms), raw_tokens=raw)

    def _authenticate(self, request: KafkaRequest) -> Respond:
        assert self._exchange is not None and self.mechanism is not None
        try:
            answer = self._exchange.step(request.body.auth_bytes or b"")
        except AuthenticationFailed as exc:
            self.state = State.FAILED
            self.failure = exc.reason
            response = _Authenticate(
                error_code=int(ErrorCode.SASL_AUTHENTICATION_FAILED),
                error_message=failure_message(self.mechanism),
                auth_bytes=b"",
                session_lifetime_ms=0,
            )
            return Respond(response, close_reason=f"authentication failed: {exc.reason}")
        response = _Authenticate(
            error_code=0, error_message=None, auth_bytes=answer, session_lifetime_ms=0
        )
        if self._exchange.done:
            return Respond(response, principal=self._complete())
        return Respond(response)

    def _complete(self) -> str:
        assert self._exchange is not None and self._exchange.user is not None
        self.state = State.DONE
        self.principal = self._exchange.user
        self._exchange = None
        return self.principal

    def _fail(self, reason: str) -> Refuse:
        self.state = State.FAILED
        self.failure = reason
        return Refuse(f"authentication failed: {reason}")

    def _refuse(self, reason: str) -> Refuse:
        self.state = State.FAILED
        return Refuse(reason)
