"""What every ZeroMQ shell over a core does: call the core, carry out its Result.

Shell side. A process shell (:mod:`workers.coordinator_shell`,
:mod:`workers.broker_shell`) mixes :class:`CoreShell` into its
:class:`workers.zmq_server.Server`. Its ``op_<name>`` handlers decode a request into the
core's event, once, and hand it to :meth:`CoreShell.call`, which reads the clock, calls
``self.core.handle`` and carries out the Result: each reply is encoded for the wire
(:func:`workers.zmq_replies.encode`) and sent to the request its token names (a token is
``(peer, request id)``), sends go to :meth:`CoreShell.carry_out_sends`, and the deadline
is kept for the timer. The request's own reply, when the core gives it at once, is
returned to the server's dispatcher (an error is raised to it), which answers it as it
answers every op; the Result's other replies (parked requests the event released) go
after it, at the end of the loop turn, as they always have. Timers: the shell keeps the
earliest deadline any Result gave, replaced by each tick's, and calls ``self.core.tick``
when it is due. Nothing here decides anything about a request.
"""

from __future__ import annotations

from typing import Any

from kvlog import clock

from .core_result import Reply, Result, Send
from .zmq_replies import Fields, encode

Token = tuple[bytes, int | None]

# The longest the loop sleeps without a timer (so it notices a stop request soon).
MAX_POLL_MS = 100.0


class CoreShell:
    """Mixin for a :class:`workers.zmq_server.Server` over a core (``self.core``, with
    ``handle(token, event, now_ms)`` and ``tick(now_ms)``). Single-threaded, as the loop."""

    core: Any
    reply: Any
    reply_error: Any
    _deadline_ms: int | None = None
    _outgoing: list[Reply] | None = None  # replies to send at the end of the loop turn

    def call(self, peer: bytes, request_id: int | None, event: Any) -> Fields | None:
        """Hand one decoded request to the core; returns its reply if it has one now."""
        token: Token = (peer, request_id)
        return self.carry_out(self.core.handle(token, event, clock.now_ms()), own=token)

    def carry_out(
        self, result: Result, *, own: Token | None = None, timer: bool = False
    ) -> Fields | None:
        """Send the Result's replies (but ``own``'s, which is returned, or raised if it
        is an error) and sends; keep its deadline (``timer``: a tick's, which replaces the
        one kept)."""
        mine: Reply | None = None
        if self._outgoing is None:
            self._outgoing = []
        for reply in result.replies:
            if mine is None and own is not None and reply.token == own:
                mine = reply
            else:
                self._outgoing.append(reply)
        if result.sends:
            self.carry_out_sends(result.sends)
        if timer or self._deadline_ms is None:
            self._deadline_ms = result.deadline_ms
        elif result.deadline_ms is not None:
            self._deadline_ms = min(self._deadline_ms, result.deadline_ms)
        if mine is None:
            return None
        if mine.error is not None:
            raise mine.error
        return encode(mine.body)

    def flush_replies(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        for reply in outgoing or ():
            self.send_reply(reply)

    def after_drain(self) -> None:
        self.flush_replies()

    def send_reply(self, reply: Reply) -> None:
        peer, request_id = reply.token
        if reply.error is not None:
            self.reply_error(peer, request_id, reply.error)
        else:
            self.reply(peer, request_id, encode(reply.body))

    def carry_out_sends(self, sends: list[Send]) -> None:
        """Shells whose core sends requests to other processes override this."""
        raise NotImplementedError(f"{type(self).__name__} cannot send {sends[0].op}")

    # -- the timer -------------------------------------------------------------------------

    def next_timeout_ms(self, now: float) -> float:
        """Milliseconds until the core's deadline (the server loop's ``now`` is on another
        clock and is not used)."""
        if self._deadline_ms is None:
            return MAX_POLL_MS
        return max(0.0, min(MAX_POLL_MS, float(self._deadline_ms - clock.now_ms())))

    def on_timers(self, now: float) -> None:
        now_ms = clock.now_ms()
        if self._deadline_ms is not None and self._deadline_ms <= now_ms:
            self.carry_out(self.core.tick(now_ms), timer=True)
            self.flush_replies()
