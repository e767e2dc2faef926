"""A small Kafka-protocol client of kvlog's own: whole record batches in and out.

librdkafka takes records one call at a time (~4 us each from Python with headers);
``kvlog mirror`` moves whole batches, built in C (:func:`kvlog.kafka_batch.encode`), so
its data path talks Kafka's protocol itself, with the request and response types of the
one codec adapter (ipc/kafka/codec.py): Metadata v8, InitProducerId v1 (idempotence),
Produce v8, ListOffsets v5 and Fetch v11 (non-flexible versions every Kafka since 2.1 and
kvlog's listener serve; ApiVersions checks them at connect). Admin work (topics, configs,
groups) goes through Kafka mode's Admin (librdkafka) instead.

Security: PLAINTEXT, SSL (Python's ``ssl``: ``ssl.ca.location``,
``ssl.certificate.location``, ``ssl.key.location``, ``ssl.key.password``,
``ssl.endpoint.identification.algorithm``, ``enable.ssl.certificate.verification``) and
SASL_PLAINTEXT / SASL_SSL with PLAIN or SCRAM-SHA-256/512 (``sasl.username``,
``sasl.password``). A security setting it cannot honour (GSSAPI, OAUTHBEARER, ...) is an
InvalidConfigError naming it.

A :class:`Connection` is one broker's socket: requests go out at once (blocking send),
responses come back in request order through :meth:`Connection.receive`. Connection
failures raise NetworkError (retriable). Owned by one thread; not thread-safe.
"""

from __future__ import annotations

import contextlib
import itertools
import select
import socket
import ssl
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvlog.errors import InvalidConfigError, KvlogError, NetworkError, error_from_code

from ..kafka.codec import ApiKey, decode_response, encode_request, request_class
from ..kafka.framing import FrameReader, KafkaProtocolError

# The versions this client speaks, and why each: non-flexible, within what kvlog's Kafka
# listener serves and what Kafka 2.1+ (and 4.x, after KIP-896) serves.
VERSIONS = {
    ApiKey.ApiVersions: 0,
    ApiKey.Metadata: 8,
    ApiKey.InitProducerId: 1,
    ApiKey.Produce: 8,
    ApiKey.ListOffsets: 5,
    ApiKey.Fetch: 11,
    ApiKey.SaslHandshake: 1,
    ApiKey.SaslAuthenticate: 1,
}
EARLIEST = -2
LATEST = -1
_RECV_BYTES = 1 << 20
_MAX_RESPONSE_BYTES = 256 * 1024 * 1024
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_SSL_KEYS = {
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
}
_SASL_KEYS = {"sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.password"}


@dataclass(frozen=True)
class WireSecurity:
    """How to reach the brokers: security protocol, TLS files and SASL credentials."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: str = ""
    ssl: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> WireSecurity:
        """From librdkafka-style settings (what Kafka mode passes through)."""
        protocol = str(settings.get("security.protocol", "PLAINTEXT")).upper()
        if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise InvalidConfigError(f"security.protocol={protocol!r} is not a Kafka protocol")
        for name in settings:
            if name == "security.protocol":
                continue
            if name not in _SSL_KEYS | _SASL_KEYS and (
                name.startswith(("sasl.", "ssl.", "oauthbearer."))
            ):
                raise InvalidConfigError(
                    f"{name} is not supported by kvlog's batch client (the mirror's data "
                    "path): it speaks PLAIN and SCRAM-SHA-256/512 over SASL, and TLS with "
                    f"{', '.join(sorted(_SSL_KEYS))}"
                )
        mechanism = str(
            settings.get("sasl.mechanism", settings.get("sasl.mechanisms", "PLAIN"))
        ).upper()
        if protocol.startswith("SASL") and mechanism not in _SASL_MECHANISMS:
            raise InvalidConfigError(
                f"sasl.mechanism={mechanism} is not supported by kvlog's batch client; use "
                f"{', '.join(_SASL_MECHANISMS)}"
            )
        return cls(
            protocol,
            mechanism,
            str(settings.get("sasl.username", "")),
            str(settings.get("sasl.password", "")),
            {k: settings[k] for k in _SSL_KEYS if k in settings},
        )

    def context(self) -> ssl.SSLContext | None:
        if not self.protocol.endswith("SSL"):
            return None
        ctx = ssl.create_default_context(cafile=self.ssl.get("ssl.ca.location"))
        if self.ssl.get("ssl.certificate.location"):
            ctx.load_cert_chain(
                self.ssl["ssl.certificate.location"],
                self.ssl.get("ssl.key.location"),
                self.ssl.get("ssl.key.password"),
            )
        verify = str(self.ssl.get("enable.ssl.certificate.verification", "true")).lower()
        identify = str(self.ssl.get("ssl.endpoint.identification.algorithm", "https")).lower()
        if identify == "none" or verify == "false":
            ctx.check_hostname = False
        if verify == "false":
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass
class _Pending:
    correlation_id: int
    api_key: int
    version: int


class Connection:
    """One connection to one Kafka broker (module docstring). Not thread-safe."""

    def __init__(
        self,
        address: str,
        *,
        client_id: str,
        security: WireSecurity,
        timeout_s: float,
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.security = security
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._reader = FrameReader(_MAX_RESPONSE_BYTES, 4)
        self._pending: deque[_Pending] = deque()
        self._ids = itertools.count(1)
        self._done: deque[tuple[int, Any]] = deque()

    def __repr__(self) -> str:
        return f"<kafka Connection {self.address}>"

    # -- set-up ----------------------------------------------------------------------------

    def connect(self) -> None:
        host, _, port = self.address.rpartition(":")
        try:
            sock = socket.create_connection((host, int(port)), timeout=self.timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            context = self.security.context()
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=host)
        except OSError as exc:
            raise NetworkError(
                f"cannot connect to the Kafka broker {self.address}: {exc}"
            ) from None
        self._sock = sock
        versions = self.call(request_class(ApiKey.ApiVersions)(), ApiKey.ApiVersions)
        _check(versions.error_code, f"ApiVersions at {self.address}")
        served = {k.api_key: (k.min_version, k.max_version) for k in versions.api_keys}
        for key, version in VERSIONS.items():
            if key in (ApiKey.SaslHandshake, ApiKey.SaslAuthenticate) and not self.sasl:
                continue
            low, high = served.get(key, (0, -1))
            if not low <= version <= high:
                self.close()
                raise InvalidConfigError(
                    f"the Kafka broker {self.address} does not serve {key.name} v{version} "
                    f"(it serves {low}-{high}); kvlog's batch client needs it"
                )
        if self.sasl:
            self._authenticate()

    @property
    def sasl(self) -> bool:
        return self.security.protocol.startswith("SASL")

    def _authenticate(self) -> None:
        mechanism = self.security.sasl_mechanism
        handshake = request_class(ApiKey.SaslHandshake)(mechanism=mechanism)
        _check(self.call(handshake, ApiKey.SaslHandshake).error_code, "SASL handshake")
        user, password = self.security.sasl_username, self.security.sasl_password
        if mechanism == "PLAIN":
            self._sasl_step(b"\0" + user.encode() + b"\0" + password.encode())
            return
        from scramp import ScramClient

        client = ScramClient([mechanism], user, password)
        first = self._sasl_step(client.get_client_first().encode())
        client.set_server_first(first.decode())
        final = self._sasl_step(client.get_client_final().encode())
        client.set_server_final(final.decode())

    def _sasl_step(self, token: bytes) -> bytes:
        request = request_class(ApiKey.SaslAuthenticate)(auth_bytes=token)
        response = self.call(request, ApiKey.SaslAuthenticate)
        _check(response.error_code, f"SASL authentication at {self.address}")
        return bytes(response.auth_bytes or b"")

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._pending.clear()
        self._done.clear()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # -- requests --------------------------------------------------------------------------

    def send(self, request: Any, api_key: int) -> int:
        """Send a request now; returns its correlation id."""
        if self._sock is None:
            raise NetworkError(f"not connected to {self.address}")
        version = VERSIONS[api_key]
        correlation_id = next(self._ids)
        data = encode_request(request, version, correlation_id, self.client_id)
        try:
            self._sock.settimeout(self.timeout_s)
            self._sock.sendall(data)
        except OSError as exc:
            self.close()
            raise NetworkError(f"sending to {self.address} failed: {exc}") from None
        self._pending.append(_Pending(correlation_id, api_key, version))
        return correlation_id

    def receive(self, timeout_s: float = 0.0) -> list[tuple[int, Any]]:
        """Responses that arrived (waiting up to ``timeout_s`` for the first), as
        ``(correlation_id, response)`` in request order."""
        if self._done:
            out = list(self._done)
            self._done.clear()
            return out
        if self._sock is None:
            raise NetworkError(f"not connected to {self.address}")
        sock = self._sock
        pending_tls = isinstance(sock, ssl.SSLSocket) and sock.pending()
        if not pending_tls:
            ready, _, _ = select.select([sock], [], [], max(0.0, timeout_s))
            if not ready:
                return []
        try:
            sock.settimeout(0.0)
            data = sock.recv(_RECV_BYTES)
        except (BlockingIOError, ssl.SSLWantReadError):
            return []
        except OSError as exc:
            self.close()
            raise NetworkError(f"the connection to {self.address} failed: {exc}") from None
        if not data:
            self.close()
            raise NetworkError(f"the Kafka broker {self.address} closed the connection")
        try:
            frames = self._reader.feed(data)
        except KafkaProtocolError as exc:
            self.close()
            raise NetworkError(f"{self.address}: {exc}") from None
        out = []
        for frame in frames:
            if not self._pending:
                self.close()
                raise NetworkError(f"{self.address} sent a response nobody asked for")
            expected = self._pending.popleft()
            try:
                correlation_id, response = decode_response(
                    frame, expected.api_key, expected.version
                )
            except KafkaProtocolError as exc:
                self.close()
                raise NetworkError(f"{self.address}: {exc}") from None
            if correlation_id != expected.correlation_id:
                self.close()
                raise NetworkError(f"{self.address} answered out of order")
            out.append((correlation_id, response))
        return out

    def call(self, request: Any, api_key: int) -> Any:
        """One request and its response (blocking, up to the connection's timeout)."""
        correlation_id = self.send(request, api_key)
        deadline = time.monotonic() + self.timeout_s
        while True:
            for got_id, response in self.receive(max(0.0, deadline - time.monotonic())):
                if got_id == correlation_id:
                    return response
                self._done.append((got_id, response))  # someone else's, in order
            if time.monotonic() >= deadline:
                self.close()
                raise NetworkError(f"no answer from {self.address} within {self.timeout_s} s")


def _check(code: int, what: str) -> None:
    if code:
        raise error_from_code(code, f"{what}: Kafka error {code}")


# -- request builders and response readers -----------------------------------------------------


def metadata_request(topics: Iterable[str] | None) -> Any:
    cls = request_class(ApiKey.Metadata)
    return cls(
        topics=None if topics is None else [cls.MetadataRequestTopic(name=t) for t in topics],
        allow_auto_topic_creation=False,
        include_cluster_authorized_operations=False,
        include_topic_authorized_operations=False,
    )


@dataclass
class ClusterView:
    """What one Metadata response says: brokers' addresses and partitions' leaders."""

    brokers: dict[int, str]
    leaders: dict[tuple[str, int], int]
    partitions: dict[str, int]
    errors: dict[str, int]


def read_metadata(response: Any) -> ClusterView:
    brokers = {b.node_id: f"{b.host}:{b.port}" for b in response.brokers or ()}
    leaders: dict[tuple[str, int], int] = {}
    counts: dict[str, int] = {}
    errors: dict[str, int] = {}
    for topic in response.topics or ():
        if topic.error_code:
            errors[topic.name] = topic.error_code
            continue
        counts[topic.name] = len(topic.partitions or ())
        for p in topic.partitions or ():
            leaders[(topic.name, p.partition_index)] = p.leader_id
    return ClusterView(brokers, leaders, counts, errors)


def init_producer_id_request() -> Any:
    return request_class(ApiKey.InitProducerId)(
        transactional_id=None, transaction_timeout_ms=60_000
    )


def produce_request(parts: Iterable[tuple[str, int, bytes]], *, timeout_ms: int) -> Any:
    """acks=all Produce of one record set per partition."""
    cls = request_class(ApiKey.Produce)
    topic_cls = cls.TopicProduceData
    topics: dict[str, list[Any]] = {}
    for topic, partition, records in parts:
        topics.setdefault(topic, []).append(
            topic_cls.PartitionProduceData(index=partition, records=records)
        )
    return cls(
        transactional_id=None,
        acks=-1,
        timeout_ms=timeout_ms,
        topic_data=[topic_cls(name=t, partition_data=p) for t, p in topics.items()],
    )


def produce_results(response: Any) -> dict[tuple[str, int], tuple[int, int, str | None]]:
    """(topic, partition) -> (error code, base offset, error message)."""
    out = {}
    for topic in response.responses or ():
        for p in topic.partition_responses or ():
            message = getattr(p, "error_message", None)
            out[(topic.name, p.index)] = (p.error_code, p.base_offset, message)
    return out


def list_offsets_request(parts: Iterable[tuple[str, int, int]]) -> Any:
    cls = request_class(ApiKey.ListOffsets)
    topic_cls = cls.ListOffsetsTopic
    topics: dict[str, list[Any]] = {}
    for topic, partition, timestamp in parts:
        topics.setdefault(topic, []).append(
            topic_cls.ListOffsetsPartition(
                partition_index=partition,
                current_leader_epoch=-1,
                timestamp=timestamp,
                max_num_offsets=1,
            )
        )
    return cls(
        replica_id=-1,
        isolation_level=0,
        topics=[topic_cls(name=t, partitions=p) for t, p in topics.items()],
    )


def list_offsets_results(response: Any) -> dict[tuple[str, int], int]:
    out = {}
    for topic in response.topics or ():
        for p in topic.partitions or ():
            _check(p.error_code, f"ListOffsets {topic.name}-{p.partition_index}")
            out[(topic.name, p.partition_index)] = p.offset
    return out


def fetch_request(topic: str, partition: int, offset: int, *, max_bytes: int) -> Any:
    cls = request_class(ApiKey.Fetch)
    topic_cls = cls.FetchTopic
    return cls(
        replica_id=-1,
        max_wait_ms=0,
        min_bytes=0,
        max_bytes=max_bytes,
        isolation_level=0,
        session_id=0,
        session_epoch=-1,
        topics=[
            topic_cls(
                topic=topic,
                partitions=[
                    topic_cls.FetchPartition(
                        partition=partition,
                        current_leader_epoch=-1,
                        fetch_offset=offset,
                        log_start_offset=-1,
                        partition_max_bytes=max_bytes,
                    )
                ],
            )
        ],
        forgotten_topics_data=[],
        rack_id="",
    )


def fetch_result(response: Any) -> tuple[int, int, int, bytes]:
    """(error code, high watermark, log start offset, record bytes) of a one-partition
    fetch."""
    _check(response.error_code, "Fetch")
    for topic in response.responses or ():
        for p in topic.partitions or ():
            return p.error_code, p.high_watermark, p.log_start_offset, bytes(p.records or b"")
    raise KvlogError("Fetch response without the partition asked for")
