"""The console's login in a real browser (headless Chromium through Selenium) against a
CURVE broker: a page without a session goes to the login form, a wrong password is
refused on the page, alice logs in and sees only her topic, a forbidden delete is a 403
page naming the missing ACL, and logging out ends the session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_console_browser import _fill, _find, _submit

pytestmark = pytest.mark.timeout(120)


def _login(browser: Any, url: str, user: str, password: str) -> None:
    browser.get(url + "/login")
    _fill(browser, "form.login", {"user": user, "password": password})
    _submit(browser, "#login-submit")


def test_login_acl_views_and_logout(secured: dict[str, Any], browser: Any, shots: Path) -> None:
    url = secured["broker"].console_url
    browser.delete_all_cookies()
    browser.get(url + "/topics")
    assert browser.current_url == url + "/login"
    _login(browser, url, "alice", "wrong")
    assert "wrong user name or password" in _find(browser, "#error").text
    _login(browser, url, "alice", "alice-secret")
    assert browser.current_url == url + "/"
    assert _find(browser, "#user").text == "alice"
    for _ in range(100):  # the broker and node load alice's ACL within a moment
        browser.get(url + "/topics")
        if "orders-a" in browser.page_source and "Forbidden" not in browser.title:
            break
    text = _find(browser, "main").text
    assert "orders-a" in text and "payments-b" not in text
    browser.save_screenshot(str(shots / "login-topics.png"))
    browser.get(url + "/topics/orders-a")
    _fill(browser, "#delete-topic", {"confirm": "orders-a"})
    _submit(browser, "#delete-topic button")
    assert "Forbidden" in browser.title
    message = _find(browser, "#error").text
    assert "alice" in message and "delete" in message and "kvlog acls add" in message
    assert "orders-a" in secured["admin"].list_topics()
    browser.get(url + "/")
    _submit(browser, "#logout")
    assert browser.current_url == url + "/login"
    browser.get(url + "/topics")
    assert browser.current_url == url + "/login"
