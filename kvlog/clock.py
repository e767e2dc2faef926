"""The one clock: wall-clock milliseconds since the epoch.

Cores never read a clock; shells read this one and pass ``now_ms`` in, and record
timestamps come from it too. Tests replace it by passing their own ``now_ms``.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch (Kafka's timestamp unit)."""
    return time.time_ns() // 1_000_000
