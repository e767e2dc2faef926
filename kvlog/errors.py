"""One error table shared by the log, the wire and the clients.

Every error a user can meet has a code (Kafka's name and number where Kafka has one), a
message that says what happened and what to do, an exception class, and a recovery kind
that tells a client whether retrying can help:

- ``RETRIABLE``: try the same request again after a backoff.
- ``REFRESH_METADATA``: the client's picture of the cluster is stale; refresh metadata
  (partition leaders, coordinator) and then retry.
- ``FATAL``: retrying the same request will fail the same way; the caller must act.

On the wire an error travels as ``{"error": code, "message": text}``; the client turns it
back into the exception with :func:`error_from_code`. Codes >= 1000 are kvlog's own
client-side conditions that have no Kafka error code.

Each fact is written once. :class:`ErrorCode` holds Kafka's names and numbers, as Kafka's
protocol lists them. Each code then has one exception class, declared as
``class Name(Base, code=ErrorCode.X)`` with the default message as its docstring; its base
class is its recovery kind (:class:`RetriableError`, :class:`InvalidMetadataError`, or
neither: fatal), as in Kafka, where the exception hierarchy says whether a retry helps.
The code's message, recovery and exception are read from there (``ErrorCode.X.info``).
Classes and the enum are plain statements so that readers, IDEs and type checkers see them.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar, NamedTuple


class Recovery(enum.Enum):
    RETRIABLE = "retriable"
    REFRESH_METADATA = "refresh_metadata"
    FATAL = "fatal"


class ErrorCode(enum.IntEnum):
    """Kafka's error codes, by Kafka's names and numbers; kvlog's own from 1000. Each code's
    message, recovery kind and exception come from its exception class below."""

    UNKNOWN_SERVER_ERROR = -1
    NONE = 0
    OFFSET_OUT_OF_RANGE = 1
    CORRUPT_MESSAGE = 2
    UNKNOWN_TOPIC_OR_PARTITION = 3
    INVALID_FETCH_SIZE = 4
    LEADER_NOT_AVAILABLE = 5
    NOT_LEADER_OR_FOLLOWER = 6
    REQUEST_TIMED_OUT = 7
    BROKER_NOT_AVAILABLE = 8
    REPLICA_NOT_AVAILABLE = 9
    MESSAGE_TOO_LARGE = 10
    OFFSET_METADATA_TOO_LARGE = 12
    NETWORK_EXCEPTION = 13
    COORDINATOR_LOAD_IN_PROGRESS = 14
    COORDINATOR_NOT_AVAILABLE = 15
    NOT_COORDINATOR = 16
    INVALID_TOPIC_EXCEPTION = 17
    RECORD_LIST_TOO_LARGE = 18
    NOT_ENOUGH_REPLICAS = 19
    NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20
    INVALID_REQUIRED_ACKS = 21
    ILLEGAL_GENERATION = 22
    INCONSISTENT_GROUP_PROTOCOL = 23
    INVALID_GROUP_ID = 24
    UNKNOWN_MEMBER_ID = 25
    INVALID_SESSION_TIMEOUT = 26
    REBALANCE_IN_PROGRESS = 27
    INVALID_COMMIT_OFFSET_SIZE = 28
    TOPIC_AUTHORIZATION_FAILED = 29
    GROUP_AUTHORIZATION_FAILED = 30
    CLUSTER_AUTHORIZATION_FAILED = 31
    INVALID_TIMESTAMP = 32
    UNSUPPORTED_SASL_MECHANISM = 33
    ILLEGAL_SASL_STATE = 34
    UNSUPPORTED_VERSION = 35
    TOPIC_ALREADY_EXISTS = 36
    INVALID_PARTITIONS = 37
    INVALID_REPLICATION_FACTOR = 38
    INVALID_REPLICA_ASSIGNMENT = 39
    INVALID_CONFIG = 40
    NOT_CONTROLLER = 41
    INVALID_REQUEST = 42
    POLICY_VIOLATION = 44
    OUT_OF_ORDER_SEQUENCE_NUMBER = 45
    DUPLICATE_SEQUENCE_NUMBER = 46
    INVALID_PRODUCER_EPOCH = 47
    INVALID_TXN_STATE = 48
    INVALID_PRODUCER_ID_MAPPING = 49
    INVALID_TRANSACTION_TIMEOUT = 50
    CONCURRENT_TRANSACTIONS = 51
    TRANSACTION_COORDINATOR_FENCED = 52
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
    SECURITY_DISABLED = 54
    OPERATION_NOT_ATTEMPTED = 55
    STORAGE_ERROR = 56  # Kafka: KAFKA_STORAGE_ERROR
    SASL_AUTHENTICATION_FAILED = 58
    UNKNOWN_PRODUCER_ID = 59
    NON_EMPTY_GROUP = 68
    GROUP_ID_NOT_FOUND = 69
    FETCH_SESSION_ID_NOT_FOUND = 70
    INVALID_FETCH_SESSION_EPOCH = 71
    FENCED_LEADER_EPOCH = 74
    UNKNOWN_LEADER_EPOCH = 75
    UNSUPPORTED_COMPRESSION_TYPE = 76
    OFFSET_NOT_AVAILABLE = 78
    MEMBER_ID_REQUIRED = 79
    PREFERRED_LEADER_NOT_AVAILABLE = 80
    GROUP_MAX_SIZE_REACHED = 81
    FENCED_INSTANCE_ID = 82
    ELIGIBLE_LEADERS_NOT_AVAILABLE = 83
    ELECTION_NOT_NEEDED = 84
    INVALID_RECORD = 87
    THROTTLING_QUOTA_EXCEEDED = 89
    PRODUCER_FENCED = 90
    RESOURCE_NOT_FOUND = 91
    UNSUPPORTED_ASSIGNOR = 112
    # kvlog's own, client-side conditions (no Kafka error code)
    KAFKA_TIMEOUT = 1000
    NO_OFFSET_FOR_PARTITION = 1001
    COMMIT_FAILED = 1002
    ILLEGAL_STATE = 1003
    PRODUCER_CLOSED = 1004
    SERIALIZATION_ERROR = 1005
    UNAUTHENTICATED = 1006
    MAX_POLL_INTERVAL_EXCEEDED = 1007

    @property
    def info(self) -> ErrorInfo:
        return _INFO[self]

    @property
    def exception(self) -> type[KvlogError]:
        return _INFO[self].exception

    @property
    def message(self) -> str:
        return _INFO[self].message

    @property
    def recovery(self) -> Recovery:
        return _INFO[self].recovery

    @property
    def retriable(self) -> bool:
        return _INFO[self].recovery is not Recovery.FATAL


class ErrorInfo(NamedTuple):
    """What the error table says about one code (derived from its exception class)."""

    exception: type[KvlogError]
    recovery: Recovery
    message: str


# code -> its exception class, filled in as each class below is declared.
_CLASSES: dict[ErrorCode, type[KvlogError]] = {}


class KvlogError(Exception):
    """Base of every error kvlog raises on purpose; ``code`` says which one."""

    code: ClassVar[ErrorCode] = ErrorCode.UNKNOWN_SERVER_ERROR
    # The recovery kind of every code whose class derives from this one.
    _recovery: ClassVar[Recovery] = Recovery.FATAL

    def __init_subclass__(cls, code: ErrorCode | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is None:
            return  # a family (RetriableError, ...) or a user's subclass of an error
        if code in _CLASSES:
            raise TypeError(f"{code.name} has a class already: {_CLASSES[code].__name__}")
        if not (cls.__doc__ or "").strip():
            raise TypeError(f"{cls.__name__} needs a docstring: it is {code.name}'s message")
        cls.code = code
        _CLASSES[code] = cls

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or self.code.message
        self.details = details
        super().__init__(self.message)

    @property
    def retriable(self) -> bool:
        return self.code.retriable

    @property
    def recovery(self) -> Recovery:
        return self.code.recovery

    def to_wire(self) -> dict[str, Any]:
        """The error as reply fields; its details (MEMBER_ID_REQUIRED's ``member_id``)
        travel beside the code and message."""
        return {"error": int(self.code), "message": self.message, **self.details}


class RetriableError(KvlogError):
    """Retrying the same request after a backoff can succeed."""

    _recovery = Recovery.RETRIABLE


class InvalidMetadataError(RetriableError):
    """The client's view of leaders or coordinators is stale: refresh metadata, then retry."""

    _recovery = Recovery.REFRESH_METADATA


class AuthorizationError(KvlogError):
    """The principal may not perform this operation on this resource."""


# -- one class per code: the docstring is the code's default message ----------------------


class _Success(KvlogError, code=ErrorCode.NONE):
    """No error."""  # never raised: NONE has a message like every other code


class UnknownServerError(KvlogError, code=ErrorCode.UNKNOWN_SERVER_ERROR):
    """The server hit an unexpected error; its log has the details."""


class OffsetOutOfRangeError(KvlogError, code=ErrorCode.OFFSET_OUT_OF_RANGE):
    """The offset is outside the partition's [log start, log end] range; seek to a valid offset
    or set auto.offset.reset to earliest or latest."""


class CorruptRecordError(RetriableError, code=ErrorCode.CORRUPT_MESSAGE):
    """A record batch failed its CRC32C or header check; it was not stored. The producer may
    resend it."""


class UnknownTopicOrPartitionError(InvalidMetadataError, code=ErrorCode.UNKNOWN_TOPIC_OR_PARTITION):
    """No such topic or partition; create it first (kvlog topics create) or check the name."""


class InvalidFetchSizeError(KvlogError, code=ErrorCode.INVALID_FETCH_SIZE):
    """The fetch size must be positive."""


class LeaderNotAvailableError(InvalidMetadataError, code=ErrorCode.LEADER_NOT_AVAILABLE):
    """The partition has no leader right now; the client refreshes metadata and retries."""


class NotLeaderOrFollowerError(InvalidMetadataError, code=ErrorCode.NOT_LEADER_OR_FOLLOWER):
    """This node does not lead that partition; refresh metadata and send to the current
    leader."""


class RequestTimedOutError(RetriableError, code=ErrorCode.REQUEST_TIMED_OUT):
    """The request timed out; retry, or raise request.timeout.ms."""


class BrokerNotAvailableError(InvalidMetadataError, code=ErrorCode.BROKER_NOT_AVAILABLE):
    """The node is not reachable; check that kvlog serve is running."""


class ReplicaNotAvailableError(InvalidMetadataError, code=ErrorCode.REPLICA_NOT_AVAILABLE):
    """The replica is not available on this node."""


class MessageSizeTooLargeError(KvlogError, code=ErrorCode.MESSAGE_TOO_LARGE):
    """The batch or request is larger than message.max.bytes allows; send smaller records or
    raise message.max.bytes on the topic or broker."""


class OffsetMetadataTooLargeError(KvlogError, code=ErrorCode.OFFSET_METADATA_TOO_LARGE):
    """The offset commit metadata is too long (at most 4096 bytes)."""


class NetworkError(InvalidMetadataError, code=ErrorCode.NETWORK_EXCEPTION):
    """The connection to the server broke; the client reconnects and retries."""


class CoordinatorLoadInProgressError(RetriableError, code=ErrorCode.COORDINATOR_LOAD_IN_PROGRESS):
    """The coordinator is loading its state; retry shortly."""


class CoordinatorNotAvailableError(InvalidMetadataError, code=ErrorCode.COORDINATOR_NOT_AVAILABLE):
    """The group coordinator is not available; retry shortly."""


class NotCoordinatorError(InvalidMetadataError, code=ErrorCode.NOT_COORDINATOR):
    """This is not the group's coordinator; refresh metadata and retry."""


class InvalidTopicError(KvlogError, code=ErrorCode.INVALID_TOPIC_EXCEPTION):
    """Topic names are 1-249 characters of a-z, A-Z, 0-9, '.', '_' and '-', and not '.' or
    '..'."""


class RecordListTooLargeError(KvlogError, code=ErrorCode.RECORD_LIST_TOO_LARGE):
    """The produce request is too large for the partition; lower batch.size."""


class NotEnoughReplicasError(RetriableError, code=ErrorCode.NOT_ENOUGH_REPLICAS):
    """Fewer in-sync replicas than min.insync.replicas; nothing was written. Retry when the
    replicas are back."""


class NotEnoughReplicasAfterAppendError(
    RetriableError, code=ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND
):
    """The leader wrote the batch but the in-sync set shrank below min.insync.replicas before it
    was replicated."""


class InvalidRequiredAcksError(KvlogError, code=ErrorCode.INVALID_REQUIRED_ACKS):
    """acks must be 0, 1 or all (-1)."""


class IllegalGenerationError(KvlogError, code=ErrorCode.ILLEGAL_GENERATION):
    """The group has moved to a newer generation (a rebalance happened); rejoin the group."""


class InconsistentGroupProtocolError(KvlogError, code=ErrorCode.INCONSISTENT_GROUP_PROTOCOL):
    """The member's partition.assignment.strategy shares no assignor with the group's other
    members."""


class InvalidGroupIdError(KvlogError, code=ErrorCode.INVALID_GROUP_ID):
    """The group id must be a non-empty string."""


class UnknownMemberIdError(KvlogError, code=ErrorCode.UNKNOWN_MEMBER_ID):
    """The coordinator does not know this member (it left or its session expired); rejoin the
    group."""


class InvalidSessionTimeoutError(KvlogError, code=ErrorCode.INVALID_SESSION_TIMEOUT):
    """session.timeout.ms is outside the broker's group.min.session.timeout.ms /
    group.max.session.timeout.ms range."""


class RebalanceInProgressError(KvlogError, code=ErrorCode.REBALANCE_IN_PROGRESS):
    """The group is rebalancing; rejoin to get a new assignment."""


class InvalidCommitOffsetSizeError(KvlogError, code=ErrorCode.INVALID_COMMIT_OFFSET_SIZE):
    """The offset commit request is too large."""


class TopicAuthorizationFailedError(AuthorizationError, code=ErrorCode.TOPIC_AUTHORIZATION_FAILED):
    """Not authorized for this operation on the topic; ask an admin for an ACL (kvlog acls
    add)."""


class GroupAuthorizationFailedError(AuthorizationError, code=ErrorCode.GROUP_AUTHORIZATION_FAILED):
    """Not authorized for this operation on the group; ask an admin for an ACL (kvlog acls
    add)."""


class ClusterAuthorizationFailedError(
    AuthorizationError, code=ErrorCode.CLUSTER_AUTHORIZATION_FAILED
):
    """Not authorized for this cluster operation; ask an admin for an ACL (kvlog acls add)."""


class InvalidTimestampError(KvlogError, code=ErrorCode.INVALID_TIMESTAMP):
    """A record timestamp is out of range."""


class UnsupportedSaslMechanismError(KvlogError, code=ErrorCode.UNSUPPORTED_SASL_MECHANISM):
    """The broker does not enable this SASL mechanism; use one it lists (SCRAM-SHA-256 or
    SCRAM-SHA-512, as kafka_sasl_mechanisms configures)."""


class IllegalSaslStateError(KvlogError, code=ErrorCode.ILLEGAL_SASL_STATE):
    """A SASL request arrived when the connection was not expecting it (a listener without
    SASL, or out of order); check the client's security.protocol."""


class UnsupportedVersionError(KvlogError, code=ErrorCode.UNSUPPORTED_VERSION):
    """The server does not support this protocol version or op; upgrade the client or the
    server."""


class TopicAlreadyExistsError(KvlogError, code=ErrorCode.TOPIC_ALREADY_EXISTS):
    """A topic with that name exists already."""


class InvalidPartitionsError(KvlogError, code=ErrorCode.INVALID_PARTITIONS):
    """The partition count must be at least 1, and can only grow."""


class InvalidReplicationFactorError(KvlogError, code=ErrorCode.INVALID_REPLICATION_FACTOR):
    """The replication factor must be between 1 and the number of nodes (log dirs)."""


class InvalidReplicaAssignmentError(KvlogError, code=ErrorCode.INVALID_REPLICA_ASSIGNMENT):
    """The replica assignment names unknown nodes or repeats one."""


class InvalidConfigError(KvlogError, code=ErrorCode.INVALID_CONFIG):
    """A configuration name or value is not legal."""


class NotControllerError(InvalidMetadataError, code=ErrorCode.NOT_CONTROLLER):
    """This process is not the controller; refresh metadata and retry."""


class InvalidRequestError(KvlogError, code=ErrorCode.INVALID_REQUEST):
    """The request is malformed; see PROTOCOL.md for the op's fields."""


class PolicyViolationError(KvlogError, code=ErrorCode.POLICY_VIOLATION):
    """The request violates a broker policy."""


class OutOfOrderSequenceNumberError(KvlogError, code=ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER):
    """The broker received a batch out of sequence; records may have been lost between producer
    and broker. Create a new producer."""


class DuplicateSequenceNumberError(KvlogError, code=ErrorCode.DUPLICATE_SEQUENCE_NUMBER):
    """The batch was already written; the original offset is returned."""


class InvalidProducerEpochError(KvlogError, code=ErrorCode.INVALID_PRODUCER_EPOCH):
    """A newer producer with the same producer id fenced this one; close it."""


class InvalidTxnStateError(KvlogError, code=ErrorCode.INVALID_TXN_STATE):
    """The producer attempted a transactional operation in an invalid state (no transaction
    begun, or one already ending the other way)."""


class InvalidProducerIdMappingError(KvlogError, code=ErrorCode.INVALID_PRODUCER_ID_MAPPING):
    """The producer id does not belong to this transactional.id (or the transactional.id
    expired); call init_transactions() again."""


class InvalidTransactionTimeoutError(KvlogError, code=ErrorCode.INVALID_TRANSACTION_TIMEOUT):
    """transaction.timeout.ms must be positive and at most the broker's
    transaction.max.timeout.ms."""


class ConcurrentTransactionsError(RetriableError, code=ErrorCode.CONCURRENT_TRANSACTIONS):
    """The previous transaction of this transactional.id is still completing; retry
    shortly."""


class TransactionCoordinatorFencedError(KvlogError, code=ErrorCode.TRANSACTION_COORDINATOR_FENCED):
    """A newer transaction coordinator fenced this one."""


class TransactionalIdAuthorizationFailedError(
    AuthorizationError, code=ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
):
    """Not authorized for this operation on the transactional.id; ask an admin for an ACL
    (kvlog acls add)."""


class SecurityDisabledError(KvlogError, code=ErrorCode.SECURITY_DISABLED):
    """Security is off on this broker, so there are no ACLs to manage; start kvlog serve with
    --curve-secret-key to turn it on."""


class OperationNotAttemptedError(KvlogError, code=ErrorCode.OPERATION_NOT_ATTEMPTED):
    """Not attempted: another entry of the same request failed, so none was applied."""


class StorageError(InvalidMetadataError, code=ErrorCode.STORAGE_ERROR):
    """The log dir could not be written (disk full or I/O error); nothing was stored. Free space
    or fix the disk; the node recovers by itself."""


class AuthenticationFailedError(KvlogError, code=ErrorCode.SASL_AUTHENTICATION_FAILED):
    """Authentication failed; check the client's CURVE keys (kvlog's wire) or its SASL user
    name and password (Kafka's wire)."""


class UnknownProducerIdError(KvlogError, code=ErrorCode.UNKNOWN_PRODUCER_ID):
    """The broker has no state for this producer id; the producer resets its sequence
    numbers."""


class NonEmptyGroupError(KvlogError, code=ErrorCode.NON_EMPTY_GROUP):
    """The group still has active members; stop them first."""


class GroupIdNotFoundError(KvlogError, code=ErrorCode.GROUP_ID_NOT_FOUND):
    """No such group."""


class FetchSessionIdNotFoundError(RetriableError, code=ErrorCode.FETCH_SESSION_ID_NOT_FOUND):
    """This broker keeps no fetch sessions (KIP-227): send full fetch requests (session id
    0)."""


class InvalidFetchSessionEpochError(RetriableError, code=ErrorCode.INVALID_FETCH_SESSION_EPOCH):
    """The fetch session epoch is not valid for a full fetch request; use -1 or 0."""


class FencedLeaderEpochError(InvalidMetadataError, code=ErrorCode.FENCED_LEADER_EPOCH):
    """The leader epoch in the request is stale; refresh metadata and retry."""


class UnknownLeaderEpochError(RetriableError, code=ErrorCode.UNKNOWN_LEADER_EPOCH):
    """The leader epoch in the request is newer than this replica knows; retry."""


class UnsupportedCompressionTypeError(KvlogError, code=ErrorCode.UNSUPPORTED_COMPRESSION_TYPE):
    """Unknown compression codec; use none, gzip, snappy, lz4 or zstd."""


class OffsetNotAvailableError(RetriableError, code=ErrorCode.OFFSET_NOT_AVAILABLE):
    """The offset is not available yet; retry."""


class MemberIdRequiredError(KvlogError, code=ErrorCode.MEMBER_ID_REQUIRED):
    """Rejoin with the member id the coordinator returned."""


class PreferredLeaderNotAvailableError(
    InvalidMetadataError, code=ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE
):
    """The preferred leader is not in sync; try again later."""


class GroupMaxSizeReachedError(KvlogError, code=ErrorCode.GROUP_MAX_SIZE_REACHED):
    """The group has reached group.max.size members."""


class FencedInstanceIdError(KvlogError, code=ErrorCode.FENCED_INSTANCE_ID):
    """Another consumer with the same group.instance.id replaced this one; give each consumer
    its own group.instance.id."""


class EligibleLeadersNotAvailableError(
    InvalidMetadataError, code=ErrorCode.ELIGIBLE_LEADERS_NOT_AVAILABLE
):
    """No in-sync replica can lead now; wait for replicas to catch up."""


class ElectionNotNeededError(KvlogError, code=ErrorCode.ELECTION_NOT_NEEDED):
    """The preferred leader already leads."""


class InvalidRecordError(KvlogError, code=ErrorCode.INVALID_RECORD):
    """A record in the batch is not valid (a record without a key on a compacted topic); the
    batch was not stored."""


class ThrottlingQuotaExceededError(RetriableError, code=ErrorCode.THROTTLING_QUOTA_EXCEEDED):
    """A quota was exceeded; the client backs off and retries."""


class ProducerFencedError(KvlogError, code=ErrorCode.PRODUCER_FENCED):
    """A newer producer instance fenced this one; close it."""


class ResourceNotFoundError(KvlogError, code=ErrorCode.RESOURCE_NOT_FOUND):
    """The named resource does not exist."""


class UnsupportedAssignorError(KvlogError, code=ErrorCode.UNSUPPORTED_ASSIGNOR):
    """The coordinator does not know the requested server-side assignor; use range, roundrobin,
    sticky or cooperative-sticky."""


class KafkaTimeoutError(RetriableError, code=ErrorCode.KAFKA_TIMEOUT):
    """Timed out waiting; check that the broker is reachable or wait longer."""


class NoOffsetForPartitionError(KvlogError, code=ErrorCode.NO_OFFSET_FOR_PARTITION):
    """No committed offset for the partition and auto.offset.reset is 'none'; seek() first or
    set auto.offset.reset to earliest or latest."""


class CommitFailedError(KvlogError, code=ErrorCode.COMMIT_FAILED):
    """The commit failed because this consumer no longer owns the partition."""


class IllegalStateError(KvlogError, code=ErrorCode.ILLEGAL_STATE):
    """The call is not legal in the current state."""


class ProducerClosedError(KvlogError, code=ErrorCode.PRODUCER_CLOSED):
    """The producer is closed; create a new one."""


class SerializationError(KvlogError, code=ErrorCode.SERIALIZATION_ERROR):
    """A serializer or deserializer failed; check the key/value serializer."""


class UnauthenticatedError(KvlogError, code=ErrorCode.UNAUTHENTICATED):
    """The connection is not authenticated; configure security_protocol='curve' with the
    server's public key and an authorized client key."""


class MaxPollIntervalExceededError(KvlogError, code=ErrorCode.MAX_POLL_INTERVAL_EXCEEDED):
    """poll() was not called within max.poll.interval.ms, so the consumer left its group and its
    partitions went to other members; it rejoins on the next poll(). Raise max.poll.interval.ms
    or lower max.poll.records."""


# -- client-side names kafka-python programs use ------------------------------------------
#
# Subclasses without a code of their own: each keeps its base's code and recovery kind, so
# the wire and the error table are unchanged; they only give a client a name to catch.

KafkaError = KvlogError
"""kafka-python's base exception name: ``except KafkaError`` catches every kvlog error."""


class NoBrokersAvailable(NetworkError):
    """No bootstrap server answered: nothing listens at any address of bootstrap.servers (the
    connection was refused). Start the broker (kvlog serve) or fix bootstrap.servers."""


class RecordDeserializationError(SerializationError):
    """A fetched record's key or value could not be deserialized (Java's
    RecordDeserializationException). ``topic_partition`` and ``offset`` say which record,
    ``key`` and ``value`` hold its raw bytes, ``headers`` and ``timestamp`` the rest of it.
    The consumer's position stays at the record: every poll() raises this again until the
    application seeks past it."""

    def __init__(
        self,
        message: str,
        *,
        topic_partition: Any,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Any = (),
        timestamp: int = -1,
    ) -> None:
        super().__init__(message)
        self.topic_partition = topic_partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = list(headers or ())
        self.timestamp = timestamp


def _info(exc: type[KvlogError]) -> ErrorInfo:
    return ErrorInfo(exc, exc._recovery, " ".join((exc.__doc__ or "").split()))


_missing = [code.name for code in ErrorCode if code not in _CLASSES]
assert not _missing, f"error codes without an exception class: {_missing}"
_INFO: dict[ErrorCode, ErrorInfo] = {code: _info(exc) for code, exc in _CLASSES.items()}
del _missing


def error_from_code(code: int, message: str | None = None, **details: Any) -> KvlogError:
    """The exception for a wire error code; an unknown code becomes UnknownServerError."""
    try:
        exc = _CLASSES[ErrorCode(code)]
    except ValueError:
        return UnknownServerError(message or f"unknown error code {code}", code=code)
    return exc(message, **details)


def raise_for_code(code: int, message: str | None = None, **details: Any) -> None:
    if code != ErrorCode.NONE:
        raise error_from_code(code, message, **details)
