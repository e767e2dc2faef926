"""confluent-kafka's errors as kvlog's exceptions.

Kafka's broker error codes are kvlog's own numbers (:class:`kvlog.errors.ErrorCode`), so a
broker error maps by its code; librdkafka's local errors (negative codes) map by meaning.
Every Kafka-mode call goes through :func:`to_kvlog` or :func:`kafka_errors`, so a program
catches the same exceptions in both modes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from kvlog.errors import (
    AuthenticationFailedError,
    ErrorCode,
    IllegalStateError,
    InvalidConfigError,
    KafkaTimeoutError,
    KvlogError,
    MaxPollIntervalExceededError,
    MessageSizeTooLargeError,
    NetworkError,
    NoBrokersAvailable,
    NoOffsetForPartitionError,
    ProducerClosedError,
    ProducerFencedError,
    SerializationError,
    UnknownServerError,
    UnknownTopicOrPartitionError,
    UnsupportedVersionError,
    error_from_code,
)

# librdkafka's local error codes (confluent_kafka.KafkaError._NAME), by name: importing
# confluent_kafka here would make the module cost its import even in kvlog mode.
_LOCAL: dict[str, type[KvlogError]] = {
    "_TIMED_OUT": KafkaTimeoutError,
    "_MSG_TIMED_OUT": KafkaTimeoutError,
    "_TIMED_OUT_QUEUE": KafkaTimeoutError,
    "_QUEUE_FULL": KafkaTimeoutError,
    "_TRANSPORT": NetworkError,
    "_ALL_BROKERS_DOWN": NoBrokersAvailable,
    "_RESOLVE": NoBrokersAvailable,
    "_UNKNOWN_TOPIC": UnknownTopicOrPartitionError,
    "_UNKNOWN_PARTITION": UnknownTopicOrPartitionError,
    "_INVALID_ARG": InvalidConfigError,
    "_INVALID_TYPE": InvalidConfigError,
    "_STATE": IllegalStateError,
    "_DESTROY": ProducerClosedError,
    "_AUTO_OFFSET_RESET": NoOffsetForPartitionError,
    "_NO_OFFSET": NoOffsetForPartitionError,
    "_MAX_POLL_EXCEEDED": MaxPollIntervalExceededError,
    "_FENCED": ProducerFencedError,
    "_AUTHENTICATION": AuthenticationFailedError,
    "_SSL": AuthenticationFailedError,
    "_UNSUPPORTED_FEATURE": UnsupportedVersionError,
    "_NOT_IMPLEMENTED": UnsupportedVersionError,
    "_MSG_SIZE_TOO_LARGE": MessageSizeTooLargeError,
    "_KEY_SERIALIZATION": SerializationError,
    "_VALUE_SERIALIZATION": SerializationError,
    "_KEY_DESERIALIZATION": SerializationError,
    "_VALUE_DESERIALIZATION": SerializationError,
}
_BY_CODE: dict[int, type[KvlogError]] = {}


def _local_table() -> dict[int, type[KvlogError]]:
    if not _BY_CODE:
        from confluent_kafka import KafkaError

        for name, exc in _LOCAL.items():
            code = getattr(KafkaError, name, None)
            if code is not None:
                _BY_CODE[code] = exc
    return _BY_CODE


def to_kvlog(error: Any, context: str = "") -> KvlogError:
    """A confluent_kafka.KafkaError (or a KafkaException carrying one) as the kvlog
    exception a kvlog-mode client raises for the same condition."""
    if isinstance(error, KvlogError):
        return error
    if error is not None and not hasattr(error, "code") and getattr(error, "args", None):
        error = error.args[0]  # a KafkaException wraps its KafkaError as args[0]
    if error is None or not hasattr(error, "code"):
        return UnknownServerError(f"{context}{error}")
    code = error.code()
    text = error.str() if hasattr(error, "str") else str(error)
    message = f"{context}{text} (Kafka cluster)"
    if code >= 0 or code == -1:
        try:
            known = ErrorCode(code)
        except ValueError:
            return UnknownServerError(f"{message}; Kafka error code {code}")
        return error_from_code(int(known), message)
    exc = _local_table().get(code)
    if exc is None:
        return UnknownServerError(f"{message}; librdkafka error {error.name()} ({code})")
    return exc(message)


@contextlib.contextmanager
def kafka_errors(context: str = "") -> Iterator[None]:
    """Raise what the block's confluent-kafka calls raise as kvlog's exceptions."""
    from confluent_kafka import KafkaException

    try:
        yield
    except KafkaException as exc:
        raise to_kvlog(exc, context) from None


class LoginWatch:
    """librdkafka reports a refused login (a wrong password, a bad certificate) to the
    error callback only; the call that needed the connection fails as a transport error
    or a timeout. This remembers the last refusal so that such a failure is raised as
    what it is. Owned by one client; its callback runs on librdkafka's threads (one
    attribute write)."""

    def __init__(self) -> None:
        self.refused: KvlogError | None = None

    def on_error(self, error: Any) -> None:
        exc = to_kvlog(error, "login to the Kafka cluster refused: ")
        if isinstance(exc, AuthenticationFailedError):
            self.refused = exc

    def refine(self, exc: KvlogError) -> KvlogError:
        """``exc``, or the refused login behind it."""
        if self.refused is not None and isinstance(exc, (NetworkError, KafkaTimeoutError)):
            return self.refused
        return exc
