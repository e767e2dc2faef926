"""How a Kafka listener authenticates its clients: one rule for every process's listener.

With security off (no CURVE key), Kafka listeners are PLAINTEXT and every connection's
principal is ANONYMOUS, as on kvlog's own wire without security. With security on, every
Kafka connection must authenticate, as every ZeroMQ one does; the ``kafka_*`` server
settings say how (Kafka's security protocols):

=====================  ==============================  =================================
settings               protocol                        the connection's principal
=====================  ==============================  =================================
kafka_sasl_mechanisms  SASL_PLAINTEXT                  the SCRAM user name
+ kafka_ssl_certfile   SASL_SSL                        the SCRAM user name
kafka_ssl_certfile +   SSL                             the client certificate's CN
ssl_client_auth
required
none of these         the listeners stay off, and say why (a Kafka client would
                       otherwise bypass the authentication kvlog's wire requires)
=====================  ==============================  =================================

:class:`KafkaSecurityConfig` checks the settings (the supervisor, before anything
starts); :func:`listener_security` gives a process shell what its
:class:`workers.kafka_listener.KafkaListener` needs (:class:`ListenerSecurity`), bound to
the process's :class:`workers.security.ServerSecurity`, whose credential snapshot the
loop reloads when ``kvlog users`` changes it.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvlog.errors import InvalidConfigError
from kvlog.ipc.kafka.scram import MECHANISMS, CredentialLookup, DecoySalts

from .kafka_tls import CLIENT_AUTH, server_context

PLAINTEXT = "PLAINTEXT"
SASL_PLAINTEXT = "SASL_PLAINTEXT"
SASL_SSL = "SASL_SSL"
SSL = "SSL"

KAFKA_NEEDS_SASL = (
    "security is on (CURVE) and no SASL mechanism is configured for Kafka clients, who "
    "would otherwise connect unauthenticated; set --kafka-sasl-mechanisms SCRAM-SHA-256 "
    "(users: kvlog users add), or TLS client certificates (--kafka-ssl-client-auth required)"
)


@dataclass(frozen=True)
class KafkaSecurityConfig:
    """The ``kafka_sasl_*`` / ``kafka_ssl_*`` server settings. Immutable."""

    sasl_mechanisms: tuple[str, ...] = ()
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cafile: str | None = None
    ssl_client_auth: str = "none"

    @classmethod
    def of(cls, settings: Any) -> KafkaSecurityConfig:
        """From a ServerSettings (or anything with its ``kafka_*`` fields)."""
        return cls(
            tuple(getattr(settings, "kafka_sasl_mechanisms", None) or ()),
            getattr(settings, "kafka_ssl_certfile", None),
            getattr(settings, "kafka_ssl_keyfile", None),
            getattr(settings, "kafka_ssl_cafile", None),
            getattr(settings, "kafka_ssl_client_auth", None) or "none",
        )

    @property
    def configured(self) -> bool:
        return bool(self.sasl_mechanisms or self.ssl_certfile or self.ssl_keyfile) or bool(
            self.ssl_cafile or self.ssl_client_auth != "none"
        )

    def protocol(self, security_enabled: bool) -> str | None:
        """The listeners' security protocol; None: they stay off (see the module)."""
        if not security_enabled:
            return PLAINTEXT
        if self.sasl_mechanisms:
            return SASL_SSL if self.ssl_certfile else SASL_PLAINTEXT
        if self.ssl_certfile and self.ssl_client_auth == "required":
            return SSL
        return None

    def off_reason(self, security_enabled: bool) -> str | None:
        return KAFKA_NEEDS_SASL if self.protocol(security_enabled) is None else None

    def validate(self, security_enabled: bool) -> None:
        """Raise InvalidConfigError for settings that cannot work (files included)."""
        for mechanism in self.sasl_mechanisms:
            if mechanism not in MECHANISMS:
                raise InvalidConfigError(
                    f"kafka_sasl_mechanisms: {mechanism!r} is not served; kvlog serves "
                    f"{', '.join(MECHANISMS)}"
                )
        if len(set(self.sasl_mechanisms)) != len(self.sasl_mechanisms):
            raise InvalidConfigError("kafka_sasl_mechanisms names a mechanism twice")
        if self.ssl_client_auth not in CLIENT_AUTH:
            raise InvalidConfigError(
                f"kafka_ssl_client_auth must be one of {', '.join(CLIENT_AUTH)}, got "
                f"{self.ssl_client_auth!r}"
            )
        if not self.configured:
            return
        if not security_enabled:
            raise InvalidConfigError(
                "the Kafka listener's SASL and TLS settings need security on "
                "(--curve-secret-key and --curve-authorized-keys): principals and ACLs "
                "exist only with it"
            )
        if self.ssl_certfile is None and (
            self.ssl_keyfile or self.ssl_cafile or self.ssl_client_auth != "none"
        ):
            raise InvalidConfigError(
                "kafka_ssl_keyfile, kafka_ssl_cafile and kafka_ssl_client_auth need "
                "kafka_ssl_certfile (the listener's certificate): TLS is off without it"
            )
        if self.ssl_client_auth != "none" and self.ssl_cafile is None:
            raise InvalidConfigError(
                f"kafka_ssl_client_auth {self.ssl_client_auth} needs kafka_ssl_cafile: the "
                "CA certificates client certificates must chain to"
            )
        if self.ssl_certfile is not None:
            self.ssl_context()  # the files load, or the error names them

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.ssl_certfile is None:
            return None
        return server_context(
            self.ssl_certfile, self.ssl_keyfile, self.ssl_cafile, self.ssl_client_auth
        )


@dataclass(frozen=True)
class ListenerSecurity:
    """What a Kafka listener needs to authenticate connections: its protocol, the SASL
    mechanisms and the current credentials (``lookup``, ``user_exists``: the process's
    live snapshot), the TLS context. Owned by the process shell; immutable (what the
    callables read changes under them)."""

    protocol: str
    mechanisms: tuple[str, ...]
    lookup: CredentialLookup
    user_exists: Callable[[str], bool]
    decoys: DecoySalts
    ssl_context: ssl.SSLContext | None = None

    @property
    def sasl(self) -> bool:
        return bool(self.mechanisms)


def listener_security(settings: Any, security: Any) -> ListenerSecurity | None:
    """The listener security of a process with these ServerSettings and ServerSecurity
    (None: security is off, the listener is PLAINTEXT). Raises InvalidConfigError when
    security is on and nothing would authenticate Kafka clients (the listener stays off)."""
    if security is None:
        return None
    config = KafkaSecurityConfig.of(settings)
    config.validate(True)
    protocol = config.protocol(True)
    if protocol is None:
        raise InvalidConfigError(KAFKA_NEEDS_SASL)
    return ListenerSecurity(
        protocol,
        config.sasl_mechanisms,
        security.scram_credential,
        security.scram_user_exists,
        security.decoys,
        config.ssl_context(),
    )
