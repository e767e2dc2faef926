"""The one error table: codes, exception classes, messages and recovery kinds agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvlog import errors
from kvlog.errors import ErrorCode, Recovery

REAL_ERRORS = [code for code in ErrorCode if code is not ErrorCode.NONE]


def _expected_recovery(exc: type[errors.KvlogError]) -> Recovery:
    if issubclass(exc, errors.InvalidMetadataError):
        return Recovery.REFRESH_METADATA
    if issubclass(exc, errors.RetriableError):
        return Recovery.RETRIABLE
    return Recovery.FATAL


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_every_code_has_an_entry_with_a_message(code):
    info = code.info
    assert isinstance(info.message, str) and info.message.strip()
    assert info.message == code.message
    assert isinstance(info.recovery, Recovery)
    assert issubclass(info.exception, errors.KvlogError)


@pytest.mark.parametrize("code", REAL_ERRORS, ids=lambda c: c.name)
def test_exception_class_carries_its_code(code):
    exc_type = code.info.exception
    assert exc_type.code is code
    assert exc_type.__doc__ and exc_type.__doc__.strip()
    exc = exc_type()
    assert exc.code is code
    assert exc.message == code.message
    assert str(exc) == code.message
    assert exc.to_wire() == {"error": int(code), "message": code.message}


@pytest.mark.parametrize("code", REAL_ERRORS, ids=lambda c: c.name)
def test_recovery_kind_agrees_with_the_class_hierarchy(code):
    exc_type = code.info.exception
    assert code.recovery is _expected_recovery(exc_type), exc_type.__mro__
    assert code.retriable == (code.recovery is not Recovery.FATAL)
    assert exc_type().retriable == code.retriable
    assert exc_type().recovery is code.recovery


def test_each_code_has_its_own_exception_class():
    classes = [code.info.exception for code in REAL_ERRORS]
    assert len(set(classes)) == len(classes)


@pytest.mark.parametrize("code", REAL_ERRORS, ids=lambda c: c.name)
def test_error_from_code_round_trip(code):
    exc = errors.error_from_code(int(code), "custom text", partition=3)
    assert type(exc) is code.info.exception
    assert exc.code is code
    assert exc.message == "custom text"
    assert exc.details == {"partition": 3}
    wire = exc.to_wire()
    back = errors.error_from_code(wire["error"], wire["message"])
    assert type(back) is type(exc) and back.message == exc.message
    default = errors.error_from_code(int(code))
    assert default.message == code.message
    with pytest.raises(code.info.exception):
        errors.raise_for_code(int(code))


@pytest.mark.parametrize("unknown", [-2, 11, 999, 5000, 1 << 40])
def test_unknown_code_becomes_unknown_server_error(unknown):
    exc = errors.error_from_code(unknown)
    assert type(exc) is errors.UnknownServerError
    assert exc.code is ErrorCode.UNKNOWN_SERVER_ERROR
    assert str(unknown) in exc.message
    assert exc.details == {"code": unknown}
    assert not exc.retriable
    given_text = errors.error_from_code(unknown, "server said so")
    assert given_text.message == "server said so"


def test_no_error_does_not_raise():
    errors.raise_for_code(0)
    errors.raise_for_code(ErrorCode.NONE)
    assert ErrorCode.NONE.recovery is Recovery.FATAL


def test_codes_are_kafkas_numbers():
    # A few anchors: Kafka clients in other languages rely on these exact numbers.
    assert ErrorCode.OFFSET_OUT_OF_RANGE == 1
    assert ErrorCode.CORRUPT_MESSAGE == 2
    assert ErrorCode.NOT_LEADER_OR_FOLLOWER == 6
    assert ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER == 45
    assert ErrorCode.STORAGE_ERROR == 56
    assert ErrorCode.UNKNOWN_PRODUCER_ID == 59
    assert ErrorCode.UNSUPPORTED_COMPRESSION_TYPE == 76
    # kvlog's own client-side codes stay out of Kafka's range.
    own = [c for c in ErrorCode if c >= 1000]
    assert own and all(c.name not in {"NONE", "UNKNOWN_SERVER_ERROR"} for c in own)
    assert all(-1 <= c < 200 for c in ErrorCode if c < 1000)


def test_protocol_md_error_table_matches_the_code() -> None:
    # PROTOCOL.md section 5.3 lists every code for client writers in other languages: its
    # code, name, recovery kind and message must be the table's, so neither drifts.
    protocol = Path(__file__).resolve().parents[2] / "PROTOCOL.md"
    rows = re.findall(
        r"^\| (-?\d+) \| `(\w+)` \| (\w+) \| [^|]+ \| (.+) \|$",
        protocol.read_text(),
        flags=re.MULTILINE,
    )
    documented = {int(code): (name, recovery, message) for code, name, recovery, message in rows}
    expected = {int(c): (c.name, c.recovery.value, c.message) for c in ErrorCode}
    assert documented == expected
