"""The web console over plain HTTP against a real broker: CSRF and cross-origin POSTs are
refused, errors are pages with the broker's message, the supervisor restarts a killed
console on the same address; and, without a broker, the console_listen setting, the
console staying on with security on (it logs users in: test_console_login.py), and how
records are shown."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from consoletest_util import wait_for_console

import kvlog
from kvlog.errors import InvalidConfigError
from kvlog.ipc.security import generate_keys
from kvlog.types import TopicPartition
from kvlog.workers.console.listen import (
    DEFAULT_CONSOLE_LISTEN,
    parse_console_listen,
    resolve_auto,
)
from kvlog.workers.console.records import render_bytes
from kvlog.workers.ports import PortInUseError

pytestmark = pytest.mark.timeout(120)


def _request(
    url: str,
    method: str = "GET",
    path: str = "/",
    body: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        data = urllib.parse.urlencode(body).encode() if body is not None else None
        sent = dict(headers or {})
        if data is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=data, headers=sent)
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read().decode()
    finally:
        conn.close()


def _csrf(url: str) -> tuple[str, str]:
    """(cookie header, token) from a page, as a browser gets them."""
    status, headers, body = _request(url, path="/topics")
    assert status == 200
    cookie = headers["set-cookie"].split(";")[0]
    assert "samesite=strict" in headers["set-cookie"].lower()
    token = re.search(r'name="csrf" value="([^"]+)"', body)
    assert token is not None
    return cookie, token.group(1)


def test_posts_need_the_csrf_token_and_this_origin(broker: Any, admin: Any) -> None:
    url = broker.console_url
    form = {"name": "csrf-topic", "partitions": "1", "replication_factor": "1"}
    status, _, body = _request(url, "POST", "/topics", form)
    assert status == 403 and "CSRF" in body
    cookie, token = _csrf(url)
    status, _, _ = _request(url, "POST", "/topics", {**form, "csrf": "forged"}, {"Cookie": cookie})
    assert status == 403
    evil = {"Cookie": cookie, "Origin": "http://evil.example"}
    status, _, body = _request(url, "POST", "/topics", {**form, "csrf": token}, evil)
    assert status == 403 and "cross-origin" in body
    assert "csrf-topic" not in admin.list_topics()
    host = urllib.parse.urlsplit(url).netloc
    same = {"Cookie": cookie, "Origin": f"http://{host}"}
    status, headers, _ = _request(url, "POST", "/topics", {**form, "csrf": token}, same)
    assert status == 303 and headers["location"] == "/topics/csrf-topic"
    assert "csrf-topic" in admin.list_topics()
    # A bad config is the broker's refusal, shown on the page; nothing is created.
    bad = {**form, "name": "bad-config", "configs": "retention.ms=soon", "csrf": token}
    status, _, body = _request(url, "POST", "/topics", bad, {"Cookie": cookie})
    assert status == 400 and "retention.ms" in body
    assert "bad-config" not in admin.list_topics()


def _plan(body: str) -> list[int]:
    return [int(v) for v in re.findall(r'<td class="new">(\d+)</td>', body)]


def _two_partitions(broker: Any, admin: Any, topic: str, records: int) -> None:
    """A new topic of two partitions, ``records`` records spread over them in turn."""
    admin.create_topic(topic, 2)
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, linger_ms=0) as producer:
        for i in range(records):
            producer.send(topic, value=b"%d" % i, partition=i % 2)
        producer.flush()


def test_reset_strategies_plan_clamped_offsets(broker: Any, admin: Any) -> None:
    _two_partitions(broker, admin, "resets", 10)
    admin.alter_group_offsets(
        "planner", {TopicPartition("resets", 0): 4, TopicPartition("resets", 1): 1}
    )
    url = broker.console_url
    cookie, token = _csrf(url)

    def reset(strategy: str, value: str, action: str = "dry-run") -> tuple[int, str]:
        form = {"csrf": token, "topic": "resets", "strategy": strategy, "value": value}
        status, _, body = _request(
            url, "POST", "/groups/planner/reset", {**form, "action": action}, {"Cookie": cookie}
        )
        return status, body

    assert _plan(reset("shift", "-2")[1]) == [2, 0]  # 1 - 2 clamps to the log start
    assert _plan(reset("shift", "+3")[1]) == [5, 4]
    assert _plan(reset("offset", "99")[1]) == [5, 5]  # clamped to the log end
    assert _plan(reset("latest", "")[1]) == [5, 5]
    assert _plan(reset("timestamp", "2000-01-01T00:00:00Z")[1]) == [0, 0]
    assert _plan(reset("timestamp", str(int(time.time() * 1000) + 3_600_000))[1]) == [5, 5]
    status, body = reset("offset", "")
    assert status == 400 and "needs a value" in body
    committed = {TopicPartition("resets", 0): 4, TopicPartition("resets", 1): 1}
    assert admin.list_group_offsets("planner") == committed  # dry runs change nothing
    status, body = reset("offset", "3", action="apply")
    assert status == 200 and "Applied" in body
    assert admin.list_group_offsets("planner") == {
        TopicPartition("resets", 0): 3,
        TopicPartition("resets", 1): 3,
    }


def test_group_page_shows_a_committed_offset_outside_the_log_as_out_of_range(
    broker: Any, admin: Any
) -> None:
    # As ``kvlog groups describe`` does (tests/broker/test_offsets_out_of_range.py): a
    # committed offset past the log end has no lag (not lag 0, not a negative one).
    _two_partitions(broker, admin, "strays", 6)
    admin.alter_group_offsets(
        "strayed", {TopicPartition("strays", 0): 50, TopicPartition("strays", 1): 1}
    )
    url = broker.console_url
    status, _, body = _request(url, path="/api/groups/strayed")
    assert status == 200
    rows = {r["partition"]: r for r in json.loads(body)["partitions"]}
    assert (rows[0]["committed_offset"], rows[0]["log_end_offset"], rows[0]["lag"]) == (50, 3, None)
    assert "past the log end offset 3" in rows[0]["problem"]
    assert (rows[1]["committed_offset"], rows[1]["log_end_offset"], rows[1]["lag"]) == (1, 3, 2)
    assert "problem" not in rows[1]
    status, _, page = _request(url, path="/groups/strayed")
    assert status == 200
    cells = re.findall(
        r'<tr data-tp="strays-(\d)">.*?<td class="lag"[^>]*>([^<]*)</td>', page, re.S
    )
    assert dict(cells) == {"0": "out of range", "1": "2"}
    assert "strays-0: committed offset 50 is past the log end offset 3" in page
    total = re.search(r'id="total-lag">(\d+)<', page)
    assert total is not None and total.group(1) == "2"  # the stray partition adds nothing


def test_pages_send_security_headers_and_errors_are_pages(broker: Any) -> None:
    status, headers, body = _request(broker.console_url, path="/")
    assert status == 200
    assert broker.kafka_bootstrap and broker.kafka_bootstrap in body  # from the run file
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    status, _, body = _request(broker.console_url, path="/topics/no-such-topic")
    assert status == 404 and "no-such-topic" in body
    status, headers, body = _request(broker.console_url, path="/api/groups/nobody")
    assert status == 200 and json.loads(body)["state"] == "Dead"
    status, _, body = _request(broker.console_url, path="/messages?topic=x&offset=abc")
    assert status == 200 and "whole number" in body


def test_supervisor_restarts_a_killed_console_on_its_address(broker: Any) -> None:
    (console,) = [c for c in broker.children if c.role == "console"]
    old_pid, url = console.pid, broker.console_url
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while console.pid == old_pid and time.monotonic() < deadline:
        time.sleep(0.05)
    assert console.pid != old_pid and console.endpoint == url
    wait_for_console(url)
    assert _request(url, path="/groups")[0] == 200


def test_console_listen_setting() -> None:
    assert parse_console_listen("x", "none") is None
    assert parse_console_listen("x", "auto") == "auto"
    assert parse_console_listen("x", " 0.0.0.0:8080 ") == "0.0.0.0:8080"
    with pytest.raises(InvalidConfigError, match="HOST:PORT"):
        parse_console_listen("x", "8080")
    assert resolve_auto("auto", "tcp://127.0.0.1:7092") == DEFAULT_CONSOLE_LISTEN
    assert resolve_auto("auto", "tcp://127.0.0.1:0") == "127.0.0.1:0"
    assert resolve_auto(None, "tcp://127.0.0.1:7092") is None


def test_console_stays_on_with_security_on(tmp_path: Path) -> None:
    """With security on the console asks for a login (test_console_login.py) instead of
    turning off; ``console_listen="none"`` still turns it off."""
    keys = tmp_path / "keys"
    _, secret = generate_keys(keys, "server")
    (tmp_path / "authorized").mkdir()
    broker = kvlog.Broker(
        tmp_path / "d",
        "tcp://127.0.0.1:0",
        curve_secret_key=secret,
        curve_authorized_keys=tmp_path / "authorized",
        kafka_listen=None,
    )
    assert broker.console_listen == "127.0.0.1:0"
    assert broker.console_off_reason is None
    assert kvlog.Broker(tmp_path / "e", console_listen="none").console_listen is None


def test_a_taken_console_port_fails_the_start_before_any_process(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        broker = kvlog.Broker(
            tmp_path / "d", "tcp://127.0.0.1:0", console_listen=f"127.0.0.1:{port}"
        )
        with pytest.raises(PortInUseError, match=f"port {port} \\(the web console"):
            broker.start()
    assert broker.children == [] and not (tmp_path / "d").exists()


def test_records_show_as_json_text_or_hex() -> None:
    assert render_bytes(None)["kind"] == "null"
    shown = render_bytes(b'{"a": [1, 2]}')
    assert shown["kind"] == "json" and shown["text"] == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    assert render_bytes(b"{not json")["kind"] == "text"
    assert render_bytes("héllo\tthere".encode())["text"] == "héllo\tthere"
    binary = render_bytes(bytes(range(20)))
    assert binary["kind"] == "hex" and binary["text"].splitlines() == [
        "00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f",
        "10 11 12 13",
    ]
    big = render_bytes(b"x" * (100 * 1024))
    assert big["cut"] and big["size"] == 100 * 1024 and len(big["text"]) == 64 * 1024
