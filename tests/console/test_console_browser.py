"""The web console in a real browser (headless Chromium through Selenium) against a real
broker: every page opens, a topic is created and deleted in the browser, records produced
through the API show in the message browser, a group's lag falls on its chart while a
consumer runs, its offsets are reset (dry run, then apply), and the live chart shows the
records flowing. Each page is screenshot (KVLOG_CONSOLE_SCREENSHOTS=docs/console keeps
them for the README)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import kvlog
from kvlog.types import TopicPartition

pytestmark = pytest.mark.timeout(120)


def _wait(driver: Any, condition: Any, timeout_s: float = 20.0, what: str = "") -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(condition, message=what)


def _find(driver: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def _find_all(driver: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, css))


def _fill(driver: Any, form: str, values: dict[str, str]) -> None:
    for name, value in values.items():
        field = _find(driver, f"{form} [name='{name}']")
        if field.tag_name == "select":
            from selenium.webdriver.support.ui import Select

            Select(field).select_by_visible_text(value)
        else:
            field.clear()
            field.send_keys(value)


def _submit(driver: Any, css: str) -> None:
    old = _find(driver, "body")
    _find(driver, css).click()
    _wait(driver, _gone(old), what=f"the page after clicking {css}")


def _gone(element: Any) -> Any:
    """Whether ``element`` left the document (the next page replaced it). chromedriver
    reports it either as a stale element or, while the page changes under the check, as
    "Node with given id does not belong to the document": both mean gone."""
    from selenium.common.exceptions import WebDriverException

    def check(_driver: Any) -> bool:
        try:
            element.is_enabled()
        except WebDriverException:
            return True
        return False

    return check


def test_pages_topics_and_messages(broker: Any, admin: Any, browser: Any, shots: Path) -> None:
    url = broker.console_url
    browser.get(url + "/")
    roles = [row.text.split()[0] for row in _find_all(browser, "#processes tr")[1:]]
    assert {"coordinator", "node", "broker", "sweeper", "console"} <= set(roles)
    log_dir = _find(browser, "#log-dirs").text
    assert str(broker.log_dirs[0]) in log_dir and "iB" in log_dir
    assert "None" in _find(browser, "#under-replicated").text
    browser.save_screenshot(str(shots / "overview.png"))

    # Create a topic in the browser, with a config.
    browser.get(url + "/topics")
    _fill(
        browser,
        "#create-topic",
        {"name": "orders", "partitions": "3", "configs": "retention.ms=3600000"},
    )
    _submit(browser, "#create-topic button")
    assert browser.current_url.endswith("/topics/orders")
    assert len(_find_all(browser, "#partitions tr")) == 1 + 3
    overrides = [r.text for r in _find_all(browser, "#configs tr.override")]
    assert overrides == ["retention.ms 3600000 topic"]
    assert admin.describe_topic("orders").overrides == {"retention.ms": 3600000}

    # Produce through the API; the records show in the browser.
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, linger_ms=0) as producer:
        for i in range(3):
            value = json.dumps({"order": i, "item": "widget"}).encode()
            producer.send("orders", key=b"customer-%d" % i, value=value, partition=0)
        producer.send(
            "orders",
            key=None,
            value=bytes(range(0, 256, 7)),
            partition=0,
            headers=[("trace-id", b"abc123"), ("raw", b"\x00\xff")],
        )
        producer.flush()
    browser.refresh()
    ends = [row.text for row in _find_all(browser, "#partitions td.end")]
    assert ends == ["4", "0", "0"]
    browser.save_screenshot(str(shots / "topic.png"))

    browser.get(url + "/topics")
    assert "orders" in _find(browser, "#topics").text
    browser.save_screenshot(str(shots / "topics.png"))

    browser.get(url + "/messages")
    _fill(browser, "#browse", {"topic": "orders", "partition": "0", "offset": "0"})
    _submit(browser, "#browse button")
    rows = _find_all(browser, "#records tr.record")
    assert [r.get_attribute("data-offset") for r in rows] == ["0", "1", "2", "3"]
    first_value = _find(browser, "#records tr.record td.value.kind-json pre").text
    assert json.loads(first_value) == {"order": 0, "item": "widget"}
    assert '\n  "order": 0' in first_value  # pretty-printed
    assert _find(browser, "#records tr.record td.key").text.endswith("customer-0")
    binary = rows[3]
    hex_cell = binary.find_element("css selector", "td.value.kind-hex pre").text
    assert hex_cell.startswith("00 07 0e 15")
    headers = binary.find_element("css selector", "td.headers").text
    assert "trace-id: abc123" in headers and "raw: 00 ff" in headers
    browser.save_screenshot(str(shots / "messages.png"))

    # From a timestamp: everything was written a moment ago, so an hour back finds all.
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    browser.get(f"{url}/messages?topic=orders&partition=0&timestamp={since}&limit=2")
    assert [r.get_attribute("data-offset") for r in _find_all(browser, "#records tr.record")] == [
        "0",
        "1",
    ]

    # Delete a topic: refused without the confirmation, done with it.
    admin.create_topic("scratch", 1)
    browser.get(url + "/topics/scratch")
    _fill(browser, "#delete-topic", {"confirm": "wrong"})
    _submit(browser, "#delete-topic button")
    assert "type the topic's name" in _find(browser, "#error").text
    assert "scratch" in admin.list_topics()
    _fill(browser, "#delete-topic", {"confirm": "scratch"})
    _submit(browser, "#delete-topic button")
    assert browser.current_url.endswith("/topics")
    assert "scratch" not in admin.list_topics()
    assert "scratch" not in _find(browser, "#topics").text


def _lag_values(browser: Any) -> int:
    return int(_find(browser, "#total-lag").text)


def test_group_lag_falls_then_reset(broker: Any, admin: Any, browser: Any, shots: Path) -> None:
    url = broker.console_url
    admin.create_topic("events", 2)
    total = 3000
    with kvlog.Producer(bootstrap_servers=broker.bootstrap, linger_ms=5) as producer:
        for i in range(total):
            producer.send("events", value=b"event %d" % i, partition=i % 2)
        producer.flush()
    group = "billing"
    # A first commit at the start, so the group has a lag before its consumer speeds up.
    admin.alter_group_offsets(group, {TopicPartition("events", p): 0 for p in range(2)})

    stop = threading.Event()
    consumed = [0]

    def consume() -> None:
        with kvlog.Consumer(
            "events",
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            max_poll_records=50,
        ) as consumer:
            while not stop.is_set():
                batch = consumer.poll(timeout_ms=200)
                consumed[0] += sum(len(v) for v in batch.values())
                if batch:
                    consumer.commit()
                    time.sleep(0.15)  # a slow consumer, so the chart sees the lag fall

    browser.get(f"{url}/groups/{group}")
    assert _lag_values(browser) == total
    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    try:
        seen: list[int] = []
        shot = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen.append(_lag_values(browser))
            if not shot and int(_find(browser, ".chart").get_attribute("data-samples")) >= 6:
                browser.save_screenshot(str(shots / "group.png"))  # the lag falling
                shot = True
            if seen[-1] == 0:
                break
            time.sleep(0.5)
        assert seen[-1] == 0, f"the lag never reached 0: {seen}"
        falling = [v for v in seen if 0 < v < total]
        assert falling, f"the chart never showed the lag between {total} and 0: {seen}"
        assert int(_find(browser, ".chart").get_attribute("data-samples")) >= 3
        browser.get(f"{url}/groups")
        assert group in _find(browser, "#groups").text
        browser.get(f"{url}/groups/{group}")
        assert "No members" not in _find(browser, "#members").text
        assert "events-0" in _find(browser, "#members").text
        _wait(
            browser,
            lambda d: int(_find(d, ".chart").get_attribute("data-samples") or 0) >= 2,
            what="two chart samples",
        )
    finally:
        stop.set()
        worker.join(30)
    # The consumer left: reset to the earliest offsets, a dry run first.
    _wait(
        browser,
        lambda d: admin.describe_groups([group])[0].get("members") == [],
        what="the group to empty",
    )
    browser.get(f"{url}/groups/{group}")
    assert "No members" in _find(browser, "#members").text
    _fill(browser, "#reset", {"topic": "events", "strategy": "earliest"})
    _submit(browser, "#reset button")
    assert "Dry run" in _find(browser, "#plan").text
    assert [c.text for c in _find_all(browser, "#plan-rows td.new")] == ["0", "0"]
    committed = admin.list_group_offsets(group)
    assert committed == {TopicPartition("events", p): total // 2 for p in range(2)}
    browser.save_screenshot(str(shots / "group-reset.png"))
    _submit(browser, "#apply-reset button")
    assert "Applied" in _find(browser, "#plan").text
    assert admin.list_group_offsets(group) == {TopicPartition("events", p): 0 for p in range(2)}
    assert _lag_values(browser) == total


def test_live_throughput(broker: Any, admin: Any, browser: Any, shots: Path) -> None:
    admin.create_topic("clicks", 1)
    browser.get(broker.console_url + "/live")
    stop = threading.Event()

    def produce() -> None:
        with kvlog.Producer(bootstrap_servers=broker.bootstrap, linger_ms=5) as producer:
            while not stop.is_set():
                for _ in range(200):
                    producer.send("clicks", value=b"click")
                producer.flush()
                time.sleep(0.05)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        _wait(
            browser,
            lambda d: (
                float(_find(d, "#total-rate").text) > 0
                and "clicks" in _find(d, ".legend").text
                and int(_find(d, ".chart").get_attribute("data-samples") or 0) >= 4
            ),
            timeout_s=30,
            what="a records/s rate for clicks",
        )
        assert float(_find(browser, "#latency-now").text) > 0
        assert "list offsets" in _find_all(browser, ".legend")[1].text
        browser.save_screenshot(str(shots / "live.png"))
    finally:
        stop.set()
        worker.join(30)
