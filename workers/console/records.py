"""A record as the message browser shows it: key and value as text, JSON pretty-printed,
or hex for binary; headers likewise; the timestamp in UTC.

Stateless functions; safe from any thread.
"""

from __future__ import annotations

import json
import time
from typing import Any

_HEX_LINE = 16  # bytes per line of a hex dump
_MAX_SHOWN = 64 * 1024  # bytes of one field the page shows; the rest is counted, not sent


def render_bytes(data: bytes | None) -> dict[str, Any]:
    """``{"kind": "null"|"json"|"text"|"hex", "text": ..., "size": ..., "cut": bool}``."""
    if data is None:
        return {"kind": "null", "text": "null", "size": 0, "cut": False}
    if not isinstance(data, bytes | bytearray | memoryview):
        data = str(data).encode()
    raw = bytes(data)
    shown, cut = raw[:_MAX_SHOWN], len(raw) > _MAX_SHOWN
    try:
        text = shown.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and not cut and text.lstrip()[:1] in ("{", "["):
        try:
            return {
                "kind": "json",
                "text": json.dumps(json.loads(text), indent=2, ensure_ascii=False),
                "size": len(raw),
                "cut": False,
            }
        except ValueError:
            pass
    if text is not None and all(c.isprintable() or c in "\t\n\r" for c in text):
        return {"kind": "text", "text": text, "size": len(raw), "cut": cut}
    lines = [shown[i : i + _HEX_LINE].hex(" ") for i in range(0, len(shown), _HEX_LINE)]
    return {"kind": "hex", "text": "\n".join(lines), "size": len(raw), "cut": cut}


def render_record(record: Any) -> dict[str, Any]:
    """A :class:`kvlog.ConsumerRecord` for the page and the JSON API."""
    ts = int(record.timestamp)
    return {
        "offset": int(record.offset),
        "timestamp": ts,
        "time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts / 1000)) + f".{ts % 1000:03d}Z",
        "key": render_bytes(record.key),
        "value": render_bytes(record.value),
        "headers": [{"key": str(k), "value": render_bytes(v)} for k, v in (record.headers or [])],
    }
