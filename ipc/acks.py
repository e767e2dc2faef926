"""What a produce request's ``acks`` means for its reply: one definition for the server
cores and every client, on every wire.

``acks=0`` asks for no reply: the server answers such a request only when it fails as a
whole (malformed, too large), and a client keeps no pending entry for it (PROTOCOL.md 2.3
and 3.4; Kafka's acks=0 produce has no response either).
"""

from __future__ import annotations

ACKS_NONE = 0  # do not wait: no reply
ACKS_LEADER = 1  # the leader has it (fsync'd)
ACKS_ALL = -1  # every in-sync replica has it


def answers_produce(acks: int) -> bool:
    """Whether a produce request with these ``acks`` gets a reply once it is handled."""
    return acks != ACKS_NONE


__all__ = ["ACKS_ALL", "ACKS_LEADER", "ACKS_NONE", "answers_produce"]
