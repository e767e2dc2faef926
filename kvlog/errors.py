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
"""

from __future__ import annotations

import enum
from typing import Any


class Recovery(enum.Enum):
    RETRIABLE = "retriable"
    REFRESH_METADATA = "refresh_metadata"
    FATAL = "fatal"


class ErrorCode(enum.IntEnum):
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
    STORAGE_ERROR = 56  # Kafka: KAFKA_STORAGE_ERROR
    SASL_AUTHENTICATION_FAILED = 58
    UNKNOWN_PRODUCER_ID = 59
    NON_EMPTY_GROUP = 68
    GROUP_ID_NOT_FOUND = 69
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
    def info(self) -> _Info:
        return _TABLE[self]

    @property
    def message(self) -> str:
        return _TABLE[self].message

    @property
    def recovery(self) -> Recovery:
        return _TABLE[self].recovery

    @property
    def retriable(self) -> bool:
        return _TABLE[self].recovery is not Recovery.FATAL


class KvlogError(Exception):
    """Base of every error kvlog raises on purpose; ``code`` says which one."""

    code: ErrorCode = ErrorCode.UNKNOWN_SERVER_ERROR

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
        return {"error": int(self.code), "message": self.message}


class RetriableError(KvlogError):
    """Retrying the same request after a backoff can succeed."""


class InvalidMetadataError(RetriableError):
    """The client's view of leaders or coordinators is stale: refresh metadata, then retry."""


class AuthorizationError(KvlogError):
    """The principal may not perform this operation on this resource."""


class UnknownServerError(KvlogError):
    """The server hit an unexpected condition; its log says more."""

    code = ErrorCode.UNKNOWN_SERVER_ERROR


class OffsetOutOfRangeError(KvlogError):
    """The requested offset is below the log start offset or past the log end offset."""

    code = ErrorCode.OFFSET_OUT_OF_RANGE


class CorruptRecordError(RetriableError):
    """A record batch failed its CRC32C or header checks."""

    code = ErrorCode.CORRUPT_MESSAGE


class UnknownTopicOrPartitionError(InvalidMetadataError):
    """No such topic or partition (yet)."""

    code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


class InvalidFetchSizeError(KvlogError):
    """A fetch asked for a non-positive number of bytes."""

    code = ErrorCode.INVALID_FETCH_SIZE


class LeaderNotAvailableError(InvalidMetadataError):
    """The partition has no leader at the moment (election in progress)."""

    code = ErrorCode.LEADER_NOT_AVAILABLE


class NotLeaderOrFollowerError(InvalidMetadataError):
    """The node that got the request does not lead (or follow) that partition."""

    code = ErrorCode.NOT_LEADER_OR_FOLLOWER


class RequestTimedOutError(RetriableError):
    """The server did not answer within request.timeout.ms."""

    code = ErrorCode.REQUEST_TIMED_OUT


class BrokerNotAvailableError(InvalidMetadataError):
    """The node is not reachable."""

    code = ErrorCode.BROKER_NOT_AVAILABLE


class ReplicaNotAvailableError(InvalidMetadataError):
    """The replica is not available on this node."""

    code = ErrorCode.REPLICA_NOT_AVAILABLE


class MessageSizeTooLargeError(KvlogError):
    """A record batch or request is larger than the broker accepts."""

    code = ErrorCode.MESSAGE_TOO_LARGE


class OffsetMetadataTooLargeError(KvlogError):
    """The metadata string of an offset commit is too long."""

    code = ErrorCode.OFFSET_METADATA_TOO_LARGE


class NetworkError(InvalidMetadataError):
    """The connection broke before an answer arrived."""

    code = ErrorCode.NETWORK_EXCEPTION


class CoordinatorLoadInProgressError(RetriableError):
    """The coordinator is still loading group state."""

    code = ErrorCode.COORDINATOR_LOAD_IN_PROGRESS


class CoordinatorNotAvailableError(InvalidMetadataError):
    """The group coordinator is not available."""

    code = ErrorCode.COORDINATOR_NOT_AVAILABLE


class NotCoordinatorError(InvalidMetadataError):
    """This process is not the coordinator for the group."""

    code = ErrorCode.NOT_COORDINATOR


class InvalidTopicError(KvlogError):
    """The topic name is not legal."""

    code = ErrorCode.INVALID_TOPIC_EXCEPTION


class RecordListTooLargeError(KvlogError):
    """The produce request carries more bytes than the partition accepts at once."""

    code = ErrorCode.RECORD_LIST_TOO_LARGE


class NotEnoughReplicasError(RetriableError):
    """Fewer in-sync replicas than min.insync.replicas; nothing was written."""

    code = ErrorCode.NOT_ENOUGH_REPLICAS


class NotEnoughReplicasAfterAppendError(RetriableError):
    """Written on the leader, but the in-sync set shrank below min.insync.replicas."""

    code = ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND


class InvalidRequiredAcksError(KvlogError):
    """acks must be 0, 1 or all (-1)."""

    code = ErrorCode.INVALID_REQUIRED_ACKS


class IllegalGenerationError(KvlogError):
    """The group generation moved on (a rebalance happened)."""

    code = ErrorCode.ILLEGAL_GENERATION


class InconsistentGroupProtocolError(KvlogError):
    """The member's protocol type or assignors do not match the group's."""

    code = ErrorCode.INCONSISTENT_GROUP_PROTOCOL


class InvalidGroupIdError(KvlogError):
    """The group id is empty or not legal."""

    code = ErrorCode.INVALID_GROUP_ID


class UnknownMemberIdError(KvlogError):
    """The coordinator does not know this member (it was removed from the group)."""

    code = ErrorCode.UNKNOWN_MEMBER_ID


class InvalidSessionTimeoutError(KvlogError):
    """session.timeout.ms is outside the broker's allowed range."""

    code = ErrorCode.INVALID_SESSION_TIMEOUT


class RebalanceInProgressError(KvlogError):
    """The group is rebalancing; rejoin."""

    code = ErrorCode.REBALANCE_IN_PROGRESS


class InvalidCommitOffsetSizeError(KvlogError):
    """The offset commit request is too large."""

    code = ErrorCode.INVALID_COMMIT_OFFSET_SIZE


class TopicAuthorizationFailedError(AuthorizationError):
    """Not authorized to access the topic."""

    code = ErrorCode.TOPIC_AUTHORIZATION_FAILED


class GroupAuthorizationFailedError(AuthorizationError):
    """Not authorized to access the group."""

    code = ErrorCode.GROUP_AUTHORIZATION_FAILED


class ClusterAuthorizationFailedError(AuthorizationError):
    """Not authorized for this cluster operation."""

    code = ErrorCode.CLUSTER_AUTHORIZATION_FAILED


class InvalidTimestampError(KvlogError):
    """A record timestamp is out of the accepted range."""

    code = ErrorCode.INVALID_TIMESTAMP


class UnsupportedVersionError(KvlogError):
    """The request uses a protocol version or op this server does not know."""

    code = ErrorCode.UNSUPPORTED_VERSION


class TopicAlreadyExistsError(KvlogError):
    """A topic with that name exists already."""

    code = ErrorCode.TOPIC_ALREADY_EXISTS


class InvalidPartitionsError(KvlogError):
    """The partition count is not legal."""

    code = ErrorCode.INVALID_PARTITIONS


class InvalidReplicationFactorError(KvlogError):
    """The replication factor is larger than the number of nodes or below 1."""

    code = ErrorCode.INVALID_REPLICATION_FACTOR


class InvalidReplicaAssignmentError(KvlogError):
    """The replica assignment is not legal."""

    code = ErrorCode.INVALID_REPLICA_ASSIGNMENT


class InvalidConfigError(KvlogError):
    """A configuration name or value is not legal."""

    code = ErrorCode.INVALID_CONFIG


class NotControllerError(InvalidMetadataError):
    """The request went to a process that is not the controller."""

    code = ErrorCode.NOT_CONTROLLER


class InvalidRequestError(KvlogError):
    """The request is malformed: not CBOR, missing or mistyped fields, unknown op."""

    code = ErrorCode.INVALID_REQUEST


class PolicyViolationError(KvlogError):
    """The request violates a broker policy."""

    code = ErrorCode.POLICY_VIOLATION


class OutOfOrderSequenceNumberError(KvlogError):
    """The broker got a batch with a sequence number it did not expect."""

    code = ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER


class DuplicateSequenceNumberError(KvlogError):
    """The batch was written before (a retried duplicate)."""

    code = ErrorCode.DUPLICATE_SEQUENCE_NUMBER


class InvalidProducerEpochError(KvlogError):
    """A newer producer with the same id fenced this one."""

    code = ErrorCode.INVALID_PRODUCER_EPOCH


class StorageError(InvalidMetadataError):
    """The log dir failed (disk full, I/O error); the log is unchanged."""

    code = ErrorCode.STORAGE_ERROR


class AuthenticationFailedError(KvlogError):
    """The client could not be authenticated."""

    code = ErrorCode.SASL_AUTHENTICATION_FAILED


class UnknownProducerIdError(KvlogError):
    """The broker has no state for this producer id (expired or lost)."""

    code = ErrorCode.UNKNOWN_PRODUCER_ID


class NonEmptyGroupError(KvlogError):
    """The group still has members."""

    code = ErrorCode.NON_EMPTY_GROUP


class GroupIdNotFoundError(KvlogError):
    """No such group."""

    code = ErrorCode.GROUP_ID_NOT_FOUND


class FencedLeaderEpochError(InvalidMetadataError):
    """The request carried a leader epoch older than the partition's."""

    code = ErrorCode.FENCED_LEADER_EPOCH


class UnknownLeaderEpochError(RetriableError):
    """The request carried a leader epoch newer than this replica knows."""

    code = ErrorCode.UNKNOWN_LEADER_EPOCH


class UnsupportedCompressionTypeError(KvlogError):
    """The batch uses a compression codec this build does not support."""

    code = ErrorCode.UNSUPPORTED_COMPRESSION_TYPE


class OffsetNotAvailableError(RetriableError):
    """The leader's high watermark is not known yet."""

    code = ErrorCode.OFFSET_NOT_AVAILABLE


class MemberIdRequiredError(KvlogError):
    """The member must rejoin with the member id the coordinator handed out."""

    code = ErrorCode.MEMBER_ID_REQUIRED


class PreferredLeaderNotAvailableError(InvalidMetadataError):
    """The preferred leader is not in the in-sync replica set."""

    code = ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE


class GroupMaxSizeReachedError(KvlogError):
    """The group is full (group.max.size)."""

    code = ErrorCode.GROUP_MAX_SIZE_REACHED


class FencedInstanceIdError(KvlogError):
    """Another member with the same group.instance.id took over."""

    code = ErrorCode.FENCED_INSTANCE_ID


class EligibleLeadersNotAvailableError(InvalidMetadataError):
    """No replica may become leader now."""

    code = ErrorCode.ELIGIBLE_LEADERS_NOT_AVAILABLE


class ElectionNotNeededError(KvlogError):
    """The preferred leader leads already."""

    code = ErrorCode.ELECTION_NOT_NEEDED


class InvalidRecordError(KvlogError):
    """A record in the batch is not valid."""

    code = ErrorCode.INVALID_RECORD


class ThrottlingQuotaExceededError(RetriableError):
    """A quota was exceeded; back off."""

    code = ErrorCode.THROTTLING_QUOTA_EXCEEDED


class ProducerFencedError(KvlogError):
    """Another producer with the same id and a newer epoch fenced this one."""

    code = ErrorCode.PRODUCER_FENCED


class ResourceNotFoundError(KvlogError):
    """The named resource does not exist."""

    code = ErrorCode.RESOURCE_NOT_FOUND


class UnsupportedAssignorError(KvlogError):
    """The server does not know the requested assignor."""

    code = ErrorCode.UNSUPPORTED_ASSIGNOR


class KafkaTimeoutError(RetriableError):
    """A client-side wait ran out (future.get(timeout), flush, metadata)."""

    code = ErrorCode.KAFKA_TIMEOUT


class NoOffsetForPartitionError(KvlogError):
    """No committed offset and auto.offset.reset is 'none'."""

    code = ErrorCode.NO_OFFSET_FOR_PARTITION


class CommitFailedError(KvlogError):
    """The offset commit cannot complete because the partition was lost by this member."""

    code = ErrorCode.COMMIT_FAILED


class IllegalStateError(KvlogError):
    """The call is not legal in the object's current state."""

    code = ErrorCode.ILLEGAL_STATE


class ProducerClosedError(KvlogError):
    """The producer is closed."""

    code = ErrorCode.PRODUCER_CLOSED


class SerializationError(KvlogError):
    """A serializer or deserializer failed."""

    code = ErrorCode.SERIALIZATION_ERROR


class UnauthenticatedError(KvlogError):
    """The connection is not authenticated (CURVE handshake failed or missing)."""

    code = ErrorCode.UNAUTHENTICATED


class MaxPollIntervalExceededError(KvlogError):
    """The consumer did not call poll() within max.poll.interval.ms and left its group."""

    code = ErrorCode.MAX_POLL_INTERVAL_EXCEEDED


class _Info:
    __slots__ = ("exception", "message", "recovery")

    def __init__(self, exception: type[KvlogError], recovery: Recovery, message: str) -> None:
        self.exception = exception
        self.recovery = recovery
        self.message = message


_R, _M, _F = Recovery.RETRIABLE, Recovery.REFRESH_METADATA, Recovery.FATAL

# code -> (exception, recovery, message). Messages say what happened and what to do.
_TABLE: dict[ErrorCode, _Info] = {
    code: _Info(exc, rec, msg)
    for code, (exc, rec, msg) in {
        ErrorCode.UNKNOWN_SERVER_ERROR: (
            UnknownServerError,
            _F,
            "The server hit an unexpected error; its log has the details.",
        ),
        ErrorCode.NONE: (KvlogError, _F, "No error."),
        ErrorCode.OFFSET_OUT_OF_RANGE: (
            OffsetOutOfRangeError,
            _F,
            "The offset is outside the partition's [log start, log end] range; seek to a "
            "valid offset or set auto.offset.reset to earliest or latest.",
        ),
        ErrorCode.CORRUPT_MESSAGE: (
            CorruptRecordError,
            _R,
            "A record batch failed its CRC32C or header check; it was not stored. The "
            "producer may resend it.",
        ),
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION: (
            UnknownTopicOrPartitionError,
            _M,
            "No such topic or partition; create it first (kvlog topics create) or check the name.",
        ),
        ErrorCode.INVALID_FETCH_SIZE: (
            InvalidFetchSizeError,
            _F,
            "The fetch size must be positive.",
        ),
        ErrorCode.LEADER_NOT_AVAILABLE: (
            LeaderNotAvailableError,
            _M,
            "The partition has no leader right now; the client refreshes metadata and retries.",
        ),
        ErrorCode.NOT_LEADER_OR_FOLLOWER: (
            NotLeaderOrFollowerError,
            _M,
            "This node does not lead that partition; refresh metadata and send to the "
            "current leader.",
        ),
        ErrorCode.REQUEST_TIMED_OUT: (
            RequestTimedOutError,
            _R,
            "The request timed out; retry, or raise request.timeout.ms.",
        ),
        ErrorCode.BROKER_NOT_AVAILABLE: (
            BrokerNotAvailableError,
            _M,
            "The node is not reachable; check that kvlog serve is running.",
        ),
        ErrorCode.REPLICA_NOT_AVAILABLE: (
            ReplicaNotAvailableError,
            _M,
            "The replica is not available on this node.",
        ),
        ErrorCode.MESSAGE_TOO_LARGE: (
            MessageSizeTooLargeError,
            _F,
            "The batch or request is larger than message.max.bytes allows; send smaller "
            "records or raise message.max.bytes on the topic or broker.",
        ),
        ErrorCode.OFFSET_METADATA_TOO_LARGE: (
            OffsetMetadataTooLargeError,
            _F,
            "The offset commit metadata is too long (at most 4096 bytes).",
        ),
        ErrorCode.NETWORK_EXCEPTION: (
            NetworkError,
            _M,
            "The connection to the server broke; the client reconnects and retries.",
        ),
        ErrorCode.COORDINATOR_LOAD_IN_PROGRESS: (
            CoordinatorLoadInProgressError,
            _R,
            "The coordinator is loading its state; retry shortly.",
        ),
        ErrorCode.COORDINATOR_NOT_AVAILABLE: (
            CoordinatorNotAvailableError,
            _M,
            "The group coordinator is not available; retry shortly.",
        ),
        ErrorCode.NOT_COORDINATOR: (
            NotCoordinatorError,
            _M,
            "This is not the group's coordinator; refresh metadata and retry.",
        ),
        ErrorCode.INVALID_TOPIC_EXCEPTION: (
            InvalidTopicError,
            _F,
            "Topic names are 1-249 characters of a-z, A-Z, 0-9, '.', '_' and '-', and "
            "not '.' or '..'.",
        ),
        ErrorCode.RECORD_LIST_TOO_LARGE: (
            RecordListTooLargeError,
            _F,
            "The produce request is too large for the partition; lower batch.size.",
        ),
        ErrorCode.NOT_ENOUGH_REPLICAS: (
            NotEnoughReplicasError,
            _R,
            "Fewer in-sync replicas than min.insync.replicas; nothing was written. Retry "
            "when the replicas are back.",
        ),
        ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND: (
            NotEnoughReplicasAfterAppendError,
            _R,
            "The leader wrote the batch but the in-sync set shrank below "
            "min.insync.replicas before it was replicated.",
        ),
        ErrorCode.INVALID_REQUIRED_ACKS: (
            InvalidRequiredAcksError,
            _F,
            "acks must be 0, 1 or all (-1).",
        ),
        ErrorCode.ILLEGAL_GENERATION: (
            IllegalGenerationError,
            _F,
            "The group has moved to a newer generation (a rebalance happened); rejoin the group.",
        ),
        ErrorCode.INCONSISTENT_GROUP_PROTOCOL: (
            InconsistentGroupProtocolError,
            _F,
            "The member's partition.assignment.strategy shares no assignor with the "
            "group's other members.",
        ),
        ErrorCode.INVALID_GROUP_ID: (
            InvalidGroupIdError,
            _F,
            "The group id must be a non-empty string.",
        ),
        ErrorCode.UNKNOWN_MEMBER_ID: (
            UnknownMemberIdError,
            _F,
            "The coordinator does not know this member (it left or its session expired); "
            "rejoin the group.",
        ),
        ErrorCode.INVALID_SESSION_TIMEOUT: (
            InvalidSessionTimeoutError,
            _F,
            "session.timeout.ms is outside the broker's group.min.session.timeout.ms / "
            "group.max.session.timeout.ms range.",
        ),
        ErrorCode.REBALANCE_IN_PROGRESS: (
            RebalanceInProgressError,
            _F,
            "The group is rebalancing; rejoin to get a new assignment.",
        ),
        ErrorCode.INVALID_COMMIT_OFFSET_SIZE: (
            InvalidCommitOffsetSizeError,
            _F,
            "The offset commit request is too large.",
        ),
        ErrorCode.TOPIC_AUTHORIZATION_FAILED: (
            TopicAuthorizationFailedError,
            _F,
            "Not authorized for this operation on the topic; ask an admin for an ACL "
            "(kvlog acls add).",
        ),
        ErrorCode.GROUP_AUTHORIZATION_FAILED: (
            GroupAuthorizationFailedError,
            _F,
            "Not authorized for this operation on the group; ask an admin for an ACL "
            "(kvlog acls add).",
        ),
        ErrorCode.CLUSTER_AUTHORIZATION_FAILED: (
            ClusterAuthorizationFailedError,
            _F,
            "Not authorized for this cluster operation; ask an admin for an ACL (kvlog acls add).",
        ),
        ErrorCode.INVALID_TIMESTAMP: (
            InvalidTimestampError,
            _F,
            "A record timestamp is out of range.",
        ),
        ErrorCode.UNSUPPORTED_VERSION: (
            UnsupportedVersionError,
            _F,
            "The server does not support this protocol version or op; upgrade the client "
            "or the server.",
        ),
        ErrorCode.TOPIC_ALREADY_EXISTS: (
            TopicAlreadyExistsError,
            _F,
            "A topic with that name exists already.",
        ),
        ErrorCode.INVALID_PARTITIONS: (
            InvalidPartitionsError,
            _F,
            "The partition count must be at least 1, and can only grow.",
        ),
        ErrorCode.INVALID_REPLICATION_FACTOR: (
            InvalidReplicationFactorError,
            _F,
            "The replication factor must be between 1 and the number of nodes (log dirs).",
        ),
        ErrorCode.INVALID_REPLICA_ASSIGNMENT: (
            InvalidReplicaAssignmentError,
            _F,
            "The replica assignment names unknown nodes or repeats one.",
        ),
        ErrorCode.INVALID_CONFIG: (
            InvalidConfigError,
            _F,
            "A configuration name or value is not legal.",
        ),
        ErrorCode.NOT_CONTROLLER: (
            NotControllerError,
            _M,
            "This process is not the controller; refresh metadata and retry.",
        ),
        ErrorCode.INVALID_REQUEST: (
            InvalidRequestError,
            _F,
            "The request is malformed; see PROTOCOL.md for the op's fields.",
        ),
        ErrorCode.POLICY_VIOLATION: (
            PolicyViolationError,
            _F,
            "The request violates a broker policy.",
        ),
        ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER: (
            OutOfOrderSequenceNumberError,
            _F,
            "The broker received a batch out of sequence; records may have been lost "
            "between producer and broker. Create a new producer.",
        ),
        ErrorCode.DUPLICATE_SEQUENCE_NUMBER: (
            DuplicateSequenceNumberError,
            _F,
            "The batch was already written; the original offset is returned.",
        ),
        ErrorCode.INVALID_PRODUCER_EPOCH: (
            InvalidProducerEpochError,
            _F,
            "A newer producer with the same producer id fenced this one; close it.",
        ),
        ErrorCode.STORAGE_ERROR: (
            StorageError,
            _M,
            "The log dir could not be written (disk full or I/O error); nothing was "
            "stored. Free space or fix the disk; the node recovers by itself.",
        ),
        ErrorCode.SASL_AUTHENTICATION_FAILED: (
            AuthenticationFailedError,
            _F,
            "Authentication failed; check the client's CURVE keys.",
        ),
        ErrorCode.UNKNOWN_PRODUCER_ID: (
            UnknownProducerIdError,
            _F,
            "The broker has no state for this producer id; the producer resets its "
            "sequence numbers.",
        ),
        ErrorCode.NON_EMPTY_GROUP: (
            NonEmptyGroupError,
            _F,
            "The group still has active members; stop them first.",
        ),
        ErrorCode.GROUP_ID_NOT_FOUND: (GroupIdNotFoundError, _F, "No such group."),
        ErrorCode.FENCED_LEADER_EPOCH: (
            FencedLeaderEpochError,
            _M,
            "The leader epoch in the request is stale; refresh metadata and retry.",
        ),
        ErrorCode.UNKNOWN_LEADER_EPOCH: (
            UnknownLeaderEpochError,
            _R,
            "The leader epoch in the request is newer than this replica knows; retry.",
        ),
        ErrorCode.UNSUPPORTED_COMPRESSION_TYPE: (
            UnsupportedCompressionTypeError,
            _F,
            "Unknown compression codec; use none, gzip, snappy, lz4 or zstd.",
        ),
        ErrorCode.OFFSET_NOT_AVAILABLE: (
            OffsetNotAvailableError,
            _R,
            "The offset is not available yet; retry.",
        ),
        ErrorCode.MEMBER_ID_REQUIRED: (
            MemberIdRequiredError,
            _F,
            "Rejoin with the member id the coordinator returned.",
        ),
        ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE: (
            PreferredLeaderNotAvailableError,
            _M,
            "The preferred leader is not in sync; try again later.",
        ),
        ErrorCode.GROUP_MAX_SIZE_REACHED: (
            GroupMaxSizeReachedError,
            _F,
            "The group has reached group.max.size members.",
        ),
        ErrorCode.FENCED_INSTANCE_ID: (
            FencedInstanceIdError,
            _F,
            "Another consumer with the same group.instance.id replaced this one; give "
            "each consumer its own group.instance.id.",
        ),
        ErrorCode.ELIGIBLE_LEADERS_NOT_AVAILABLE: (
            EligibleLeadersNotAvailableError,
            _M,
            "No in-sync replica can lead now; wait for replicas to catch up.",
        ),
        ErrorCode.ELECTION_NOT_NEEDED: (
            ElectionNotNeededError,
            _F,
            "The preferred leader already leads.",
        ),
        ErrorCode.INVALID_RECORD: (InvalidRecordError, _F, "A record in the batch is not valid."),
        ErrorCode.THROTTLING_QUOTA_EXCEEDED: (
            ThrottlingQuotaExceededError,
            _R,
            "A quota was exceeded; the client backs off and retries.",
        ),
        ErrorCode.PRODUCER_FENCED: (
            ProducerFencedError,
            _F,
            "A newer producer instance fenced this one; close it.",
        ),
        ErrorCode.RESOURCE_NOT_FOUND: (
            ResourceNotFoundError,
            _F,
            "The named resource does not exist.",
        ),
        ErrorCode.UNSUPPORTED_ASSIGNOR: (
            UnsupportedAssignorError,
            _F,
            "The coordinator does not know the requested server-side assignor; use "
            "range, roundrobin, sticky or cooperative-sticky.",
        ),
        ErrorCode.KAFKA_TIMEOUT: (
            KafkaTimeoutError,
            _R,
            "Timed out waiting; check that the broker is reachable or wait longer.",
        ),
        ErrorCode.NO_OFFSET_FOR_PARTITION: (
            NoOffsetForPartitionError,
            _F,
            "No committed offset for the partition and auto.offset.reset is 'none'; "
            "seek() first or set auto.offset.reset to earliest or latest.",
        ),
        ErrorCode.COMMIT_FAILED: (
            CommitFailedError,
            _F,
            "The commit failed because this consumer no longer owns the partition.",
        ),
        ErrorCode.ILLEGAL_STATE: (
            IllegalStateError,
            _F,
            "The call is not legal in the current state.",
        ),
        ErrorCode.PRODUCER_CLOSED: (
            ProducerClosedError,
            _F,
            "The producer is closed; create a new one.",
        ),
        ErrorCode.SERIALIZATION_ERROR: (
            SerializationError,
            _F,
            "A serializer or deserializer failed; check the key/value serializer.",
        ),
        ErrorCode.MAX_POLL_INTERVAL_EXCEEDED: (
            MaxPollIntervalExceededError,
            _F,
            "poll() was not called within max.poll.interval.ms, so the consumer left its "
            "group and its partitions went to other members; it rejoins on the next poll(). "
            "Raise max.poll.interval.ms or lower max.poll.records.",
        ),
        ErrorCode.UNAUTHENTICATED: (
            UnauthenticatedError,
            _F,
            "The connection is not authenticated; configure security_protocol='curve' "
            "with the server's public key and an authorized client key.",
        ),
    }.items()
}

_missing = set(ErrorCode) - set(_TABLE)
assert not _missing, f"error codes without a table entry: {_missing}"
del _missing

for _code, _info in _TABLE.items():
    if _info.exception.code is not _code and _info.exception is not KvlogError:
        raise AssertionError(f"{_info.exception.__name__}.code is not {_code.name}")


def error_from_code(code: int, message: str | None = None, **details: Any) -> KvlogError:
    """The exception for a wire error code; an unknown code becomes UnknownServerError."""
    try:
        info = _TABLE[ErrorCode(code)]
    except ValueError:
        return UnknownServerError(message or f"unknown error code {code}", code=code)
    return info.exception(message, **details)


def raise_for_code(code: int, message: str | None = None, **details: Any) -> None:
    if code != ErrorCode.NONE:
        raise error_from_code(code, message, **details)
