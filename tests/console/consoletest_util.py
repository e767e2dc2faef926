"""Helpers for the console tests (imported by name: tests/console is on sys.path)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request


def wait_for_console(url: str, timeout_s: float = 30.0) -> None:
    """Until the console answers (it starts beside the broker, not before it is ready)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/static/console.css", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)
