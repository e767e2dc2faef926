"""Fixtures for the web console's tests: a real broker (its console on a free loopback
port) and, for the browser tests, Debian's Chromium driven by Selenium through Debian's
chromedriver (nothing downloads a browser: without them the browser tests skip, saying
how to install them)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from consoletest_util import wait_for_console  # noqa: E402

import kvlog  # noqa: E402
from kvlog.ipc.security import generate_keys  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    b = kvlog.Broker(
        data_dir=tmp_path_factory.mktemp("console"),
        listen="tcp://127.0.0.1:0",
        config={"group.initial.rebalance.delay.ms": 0},
    ).start()
    try:
        assert b.console_url and b.console_url.startswith("http://127.0.0.1:")
        wait_for_console(b.console_url)
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def admin(broker: Any) -> Iterator[Any]:
    with kvlog.Admin(bootstrap_servers=broker.bootstrap) as a:
        yield a


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A CURVE broker (super user ``admin``) with SCRAM users alice and admin, topics
    orders-a and payments-b, and alice allowed to read orders-a only."""
    root = tmp_path_factory.mktemp("console-login")
    keys = root / "keys"
    server_public, server_secret = generate_keys(keys, "server")
    authorized = root / "authorized"
    authorized.mkdir()
    admin_public, admin_secret = generate_keys(keys, "admin")
    (authorized / "admin.key").write_bytes(Path(admin_public).read_bytes())
    broker = kvlog.Broker(
        root / "data",
        "tcp://127.0.0.1:0",
        curve_secret_key=server_secret,
        curve_authorized_keys=authorized,
        super_users=["admin"],
        kafka_listen=None,
    ).start()
    client = {
        "bootstrap_servers": broker.bootstrap,
        "security_protocol": "curve",
        "curve_server_key": str(server_public),
        "curve_secret_key": str(admin_secret),
    }
    try:
        assert broker.console_url and broker.console_off_reason is None
        wait_for_console(broker.console_url)
        with kvlog.Admin(client) as admin:
            admin.upsert_scram_user("alice", "alice-secret")
            admin.upsert_scram_user("admin", "admin-secret")
            for name in ("orders-a", "payments-b"):
                admin.create_topic(name, 1, 1)
            admin.add_acl("alice", "topic", "orders-a", "read")
            yield {"broker": broker, "admin": admin, "client": client}
    finally:
        broker.stop()


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.path.exists(path):
            return (
                f"{path} is missing: apt-get install --no-install-recommends {package} "
                "(.ci/run installs it)"
            )
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = _browser_missing()
    if missing:
        pytest.skip(missing)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: KVLOG_CONSOLE_SCREENSHOTS (docs/console to refresh the
    README's), else a tmp dir."""
    target = os.environ.get("KVLOG_CONSOLE_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path
