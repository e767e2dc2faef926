"""The web console with security on, over plain HTTP against a real CURVE broker: a login
against the broker's SCRAM users (a wrong password and an unknown user get the same
answer), signed session cookies, logout, and every page and action checked by the
servers as the logged-in principal (``as_principal``, which only kvlog's own key may
send: any other client's is refused)."""

from __future__ import annotations

import base64
import http.client
import json
import re
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import kvlog
from kvlog.errors import ClusterAuthorizationFailedError, InvalidRequestError
from kvlog.ipc.kafka.scram import scram_credential
from kvlog.types import TopicPartition
from kvlog.workers.acl import INTERNAL_PRINCIPAL, acting_principal
from kvlog.workers.console.login import SESSION_TTL_S, Logins, password_matches

pytestmark = pytest.mark.timeout(120)


class Session:
    """A cookie jar for one visitor (http.client: no redirects followed)."""

    def __init__(self, url: str) -> None:
        self.parts = urllib.parse.urlsplit(url)
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection(self.parts.hostname, self.parts.port, timeout=15)
        try:
            headers = {}
            if self.cookies:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            data = None
            if form is not None:
                data = urllib.parse.urlencode(form).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=data, headers=headers)
            reply = conn.getresponse()
            for name, value in reply.getheaders():
                if name.lower() == "set-cookie":
                    key, _, rest = value.partition("=")
                    val = rest.split(";")[0]
                    if val in ("", '""') or "max-age=0" in value.lower():
                        self.cookies.pop(key, None)
                    else:
                        self.cookies[key] = val
            headers_out = {k.lower(): v for k, v in reply.getheaders()}
            return reply.status, headers_out, reply.read().decode()
        finally:
            conn.close()

    def token(self) -> str:
        status, _, body = self.request("GET", "/login")
        found = re.search(r'name="csrf" value="([^"]+)"', body)
        assert status in (200, 303) and found is not None, body[:300]
        return found.group(1)

    def login(self, user: str, password: str) -> int:
        token = self.token()
        form = {"csrf": token, "user": user, "password": password}
        status, _, _ = self.request("POST", "/login", form)
        return status

    def post(self, path: str, form: dict[str, str]) -> tuple[int, str]:
        status, _, body = self.request("GET", "/topics")
        found = re.search(r'name="csrf" value="([^"]+)"', body)
        assert found is not None, (status, body[:300])
        status, _, body = self.request("POST", path, {**form, "csrf": found.group(1)})
        return status, body


def _wait(check: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _topics_page(session: Session) -> str:
    status, _, body = session.request("GET", "/topics")
    assert status == 200, body[:500]
    return body


def test_pages_need_a_login_and_wrong_passwords_are_refused(secured: dict[str, Any]) -> None:
    url = secured["broker"].console_url
    visitor = Session(url)
    status, headers, _ = visitor.request("GET", "/topics")
    assert status == 303 and headers["location"] == "/login"
    status, _, body = visitor.request("GET", "/api/throughput")
    assert status == 401 and "log in" in body
    wrong = Session(url)
    assert wrong.login("alice", "not-her-password") == 401
    unknown = Session(url)
    assert unknown.login("mallory", "whatever") == 401
    # The same page for both: nothing tells an unknown user from a wrong password.
    assert "kvlog_session" not in wrong.cookies and "kvlog_session" not in unknown.cookies
    for session in (wrong, unknown):
        token = session.token()
        status, _, body = session.request(
            "POST", "/login", {"csrf": token, "user": "x", "password": "y"}
        )
        assert status == 401 and "wrong user name or password" in body
    # A login without the CSRF token is refused before the password is looked at.
    status, _, _ = Session(url).request(
        "POST", "/login", {"user": "alice", "password": "alice-secret"}
    )
    assert status == 403


def test_a_principal_sees_and_does_only_what_its_acls_allow(secured: dict[str, Any]) -> None:
    url = secured["broker"].console_url
    alice = Session(url)
    assert alice.login("alice", "alice-secret") == 303
    cookie = alice.cookies["kvlog_session"]
    assert cookie
    # The broker and the node pick ACL changes up within a moment each (a 403 until then).
    _wait(
        lambda: alice.request("GET", "/topics")[0] == 200 and "orders-a" in _topics_page(alice),
        "alice's ACL reaching the broker and the node",
    )
    body = _topics_page(alice)
    assert "orders-a" in body and "payments-b" not in body
    assert re.search(r'id="user">alice<', body)
    status, _, body = alice.request("GET", "/topics/payments-b")
    assert status in (403, 404) and "payments-b" in body
    # Deleting a topic she may only read: 403 naming what is missing and how to grant it.
    status, body = alice.post("/topics/orders-a/delete", {"confirm": "orders-a"})
    assert status == 403, body[:500]
    assert "alice" in body and "delete" in body and "kvlog acls add" in body
    assert "orders-a" in secured["admin"].list_topics()
    # Creating one needs create on the cluster or the topic: refused too, nothing made.
    status, body = alice.post(
        "/topics", {"name": "alice-new", "partitions": "1", "replication_factor": "1"}
    )
    assert status == 403 and "create" in body
    assert "alice-new" not in secured["admin"].list_topics()
    # Reading records is a fetch from the node, checked there as alice too.
    with kvlog.Producer(secured["client"]) as producer:
        for topic in ("orders-a", "payments-b"):
            producer.send(topic, value=f"secret of {topic}".encode())
        producer.flush()
    status, _, body = alice.request("GET", "/messages?topic=orders-a&partition=0&offset=0")
    assert status == 200 and "secret of orders-a" in body, body[:800]
    status, _, body = alice.request("GET", "/messages?topic=payments-b&partition=0&offset=0")
    assert status == 403 and "secret of payments-b" not in body
    for path in ("/", "/live", "/api/throughput"):
        status, _, body = alice.request("GET", path)
        assert status == 200 and "payments-b" not in body, (path, body[:500])
    # Logout ends the session, also for a copy of its cookie taken before (the server
    # revoked it: deleting the browser's cookie is not all logout does).
    stolen = Session(secured["broker"].console_url)
    stolen.cookies = dict(alice.cookies)
    assert stolen.request("GET", "/topics")[0] == 200
    status, headers, _ = alice.request("POST", "/logout", {"csrf": alice.token()})
    assert status == 303 and "kvlog_session" not in alice.cookies
    status, headers, _ = alice.request("GET", "/topics")
    assert status == 303 and headers["location"] == "/login"
    status, headers, _ = stolen.request("GET", "/topics")
    assert status == 303 and headers["location"] == "/login"


def test_a_super_user_sees_and_may_do_everything(secured: dict[str, Any]) -> None:
    admin = Session(secured["broker"].console_url)
    assert admin.login("admin", "admin-secret") == 303
    body = _topics_page(admin)
    assert "orders-a" in body and "payments-b" in body
    status, body = admin.post(
        "/topics", {"name": "made-by-admin", "partitions": "1", "replication_factor": "1"}
    )
    assert status == 303, body[:500]
    assert "made-by-admin" in secured["admin"].list_topics()
    status, _, _ = admin.request("GET", "/groups")
    assert status == 200


def test_a_forged_or_expired_session_is_no_session(tmp_path: Path) -> None:
    logins = Logins(tmp_path / "no-meta", b"k" * 32)
    cookie = logins.session_cookie("alice", now_s=1000.0)
    body, _, signature = cookie.rpartition(".")
    other = Logins(tmp_path / "no-meta", b"x" * 32)
    assert other.session_user(cookie, now_s=1001.0) is None  # another key: forged
    assert logins.session_user(body + ".00" + signature[2:], now_s=1001.0) is None
    assert logins.session_user("garbage", now_s=1001.0) is None
    # Signed and unexpired, but there is no such user (any more): refused too.
    assert logins.session_user(cookie, now_s=1001.0) is None
    credential = scram_credential("SCRAM-SHA-512", "pw", salt=b"s" * 16)
    assert password_matches(credential, "pw") and not password_matches(credential, "pW")
    logins.close()
    other.close()


def test_a_logged_out_session_stays_refused_across_a_restart(tmp_path: Path) -> None:
    revoked = tmp_path / "revoked.json"
    logins = Logins(tmp_path / "no-meta", b"k" * 32, revoked)
    logins.user_exists = lambda user: True  # type: ignore[method-assign]  (no SCRAM store)
    first = logins.session_cookie("alice", now_s=1000.0)
    second = logins.session_cookie("alice", now_s=1000.0)
    assert first != second  # each login is its own session
    assert logins.session_user(first, now_s=1001.0) == "alice"
    assert logins.revoke(first, now_s=1002.0) == "alice"
    assert logins.session_user(first, now_s=1003.0) is None
    assert logins.session_user(second, now_s=1003.0) == "alice"  # only that one
    assert logins.revoke("forged.cookie", now_s=1003.0) is None
    # A restarted console reads the revocations back.
    again = Logins(tmp_path / "no-meta", b"k" * 32, revoked)
    again.user_exists = lambda user: True  # type: ignore[method-assign]
    assert again.session_user(first, now_s=1004.0) is None
    assert again.session_user(second, now_s=1004.0) == "alice"
    # Expired revocations are dropped at the next write: the file does not grow forever.
    late = again.session_cookie("alice", now_s=1000.0 + SESSION_TTL_S + 10)
    again.revoke(late, now_s=1000.0 + SESSION_TTL_S + 11)
    assert list(json.loads(revoked.read_text())) == [late_id(late)]
    # An unreadable file refuses every session issued before it was written, not later ones.
    revoked.write_text("{not json")
    broken = Logins(tmp_path / "no-meta", b"k" * 32, revoked)
    broken.user_exists = lambda user: True  # type: ignore[method-assign]
    assert broken.session_user(second, now_s=1004.0) is None
    fresh = broken.session_cookie("alice")
    assert broken.session_user(fresh) == "alice"
    for each in (logins, again, broken):
        each.close()


def late_id(cookie: str) -> str:
    body = cookie.rpartition(".")[0]
    return json.loads(base64.urlsafe_b64decode(body.encode()))[2]


def test_as_principal_from_any_other_key_is_refused(secured: dict[str, Any]) -> None:
    # Even a super user's key may not act as someone else: only kvlog's own key may.
    with (
        kvlog.Admin({**secured["client"], "as_principal": "alice"}) as forged,
        pytest.raises(ClusterAuthorizationFailedError, match="as_principal"),
    ):
        forged.list_topics()


def test_groups_are_listed_only_where_the_principal_may_describe_them(
    secured: dict[str, Any],
) -> None:
    admin = secured["admin"]
    for group in ("team-a", "team-b"):
        admin.alter_group_offsets(group, {TopicPartition("orders-a", 0): 0})
    admin.add_acl("alice", "group", "team-a", "describe")
    alice = Session(secured["broker"].console_url)
    assert alice.login("alice", "alice-secret") == 303

    def listed() -> str:
        status, _, body = alice.request("GET", "/groups")
        assert status == 200, body[:500]
        return body

    # alice has no describe on the cluster (kvlog's list_groups needs it): the console
    # lists the groups and keeps those the broker lets her describe.
    _wait(
        lambda: alice.request("GET", "/groups")[0] == 200 and "team-a" in listed(),
        "alice's group ACL reaching the broker",
    )
    assert "team-b" not in listed()
    status, _, body = alice.request("GET", "/groups/team-b")
    assert status == 403 and "team-b" in body and "kvlog acls add" in body
    status, _, body = alice.request("GET", "/api/groups/team-b")
    assert status == 403 and "GROUP_AUTHORIZATION_FAILED" in body
    super_user = Session(secured["broker"].console_url)
    assert super_user.login("admin", "admin-secret") == 303
    status, _, body = super_user.request("GET", "/groups")
    assert status == 200 and "team-a" in body and "team-b" in body


def test_acting_principal_rules() -> None:
    assert acting_principal("alice", {"op": "metadata"}) == "alice"
    assert acting_principal(INTERNAL_PRINCIPAL, {"as_principal": "bob"}) == "bob"
    with pytest.raises(ClusterAuthorizationFailedError, match="as_principal"):
        acting_principal("admin", {"as_principal": "bob"})
    for bad in ("", INTERNAL_PRINCIPAL, "*", 7, "x" * 1025):
        with pytest.raises(InvalidRequestError):
            acting_principal(INTERNAL_PRINCIPAL, {"as_principal": bad})


def test_failed_logins_lock_a_user_name_out_for_a_while(tmp_path: Path) -> None:
    logins = Logins(tmp_path / "no-meta", b"k" * 32)
    for attempt in range(10):
        assert not logins.locked_out("alice", now_s=100.0 + attempt)
        assert not logins.check_password("alice", "guess", now_s=100.0 + attempt)
    assert logins.locked_out("alice", now_s=110.0)
    assert not logins.locked_out("bob", now_s=110.0)  # per user name
    assert not logins.locked_out("alice", now_s=170.0)  # the window moved on
    logins.close()
