"""What a core hands back to its shell: one :class:`Result` per event.

The cores (modules named ``*_core.py``) are sans-IO: each takes a typed event and
``now_ms`` and returns a Result. No core reads a clock, makes an id or random number, or
touches a socket; it reaches storage only through the store interface it was given, and
does so inside the event, so a reply never leaves before what it acknowledges is durable.

The shells (``*_shell.py``: one per process on kvlog's ZeroMQ wire, and the Kafka
listener beside them) decode a request once, read the clock once, call the core and carry
out its Result, in this order:

1. ``replies``: answer the request each token names. A token is opaque to the core (the
   shell's own address of the request: peer, request id, principal, ...). The body is the
   core's typed answer, never a wire format: each shell encodes it for its own wire.
2. ``sends``: requests to other processes (a node's ISR change to the controller, a
   replica fetch to a leader). The answer comes back to the core as an event that
   carries the send's ``token``.
3. ``deadline_ms``: when the core next needs its timer event (None: it does not), on the
   same clock as ``now_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvlog.errors import KvlogError


@dataclass(slots=True)
class Reply:
    """The answer to one request: a typed body, or an error."""

    token: Any
    body: Any = None
    error: KvlogError | None = None


@dataclass(slots=True)
class Send:
    """A request for the shell to send to another process on the core's behalf."""

    to: Any  # who: "coordinator", a node id, ...
    op: str
    fields: dict[str, Any]
    token: Any = None  # handed back to the core with the answer
    timeout_ms: int = 30_000


@dataclass(slots=True)
class Result:
    replies: list[Reply] = field(default_factory=list)
    sends: list[Send] = field(default_factory=list)
    deadline_ms: int | None = None

    def reply(self, token: Any, body: Any = None) -> Result:
        self.replies.append(Reply(token, body))
        return self

    def fail(self, token: Any, error: KvlogError) -> Result:
        self.replies.append(Reply(token, None, error))
        return self

    def send(self, send: Send) -> Result:
        self.sends.append(send)
        return self

    def wake_at(self, deadline_ms: int | None) -> Result:
        """Keep the earlier of two deadlines."""
        if deadline_ms is not None and (self.deadline_ms is None or deadline_ms < self.deadline_ms):
            self.deadline_ms = deadline_ms
        return self

    def extend(self, other: Result) -> Result:
        """Fold another core's (or another step's) result into this one."""
        self.replies.extend(other.replies)
        self.sends.extend(other.sends)
        return self.wake_at(other.deadline_ms)

    def __bool__(self) -> bool:
        return bool(self.replies or self.sends)
