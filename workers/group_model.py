"""The consumer-group model: states, their legal transitions, members, groups.

Plain data owned by :class:`workers.group_core.GroupCoordinator`; ``Group.encode``
and ``Group.decode`` are the durable form the coordinator writes to its ``groups`` table
(so a coordinator restart is a reload). Kafka's ``ClassicGroupState`` names the states.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import cbor2

from kvlog.types import TopicPartition

from .config import broker_default


class GroupState(enum.Enum):
    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


# Legal previous states of each state (Kafka's validPreviousStates).
_VALID_PREVIOUS = {
    GroupState.EMPTY: {GroupState.PREPARING_REBALANCE},
    GroupState.PREPARING_REBALANCE: {
        GroupState.EMPTY,
        GroupState.STABLE,
        GroupState.COMPLETING_REBALANCE,
    },
    GroupState.COMPLETING_REBALANCE: {GroupState.PREPARING_REBALANCE},
    GroupState.STABLE: {GroupState.COMPLETING_REBALANCE, GroupState.PREPARING_REBALANCE},
    GroupState.DEAD: {
        GroupState.EMPTY,
        GroupState.STABLE,
        GroupState.PREPARING_REBALANCE,
        GroupState.COMPLETING_REBALANCE,
        GroupState.DEAD,
    },
}


@dataclass
class GroupConfig:
    min_session_timeout_ms: int = broker_default("group.min.session.timeout.ms")
    max_session_timeout_ms: int = broker_default("group.max.session.timeout.ms")
    initial_rebalance_delay_ms: int = broker_default("group.initial.rebalance.delay.ms")
    max_size: int = broker_default("group.max.size")
    # Heartbeats parked at once (long polls), over every group: beyond it a heartbeat is
    # answered at once, as for a client that sends no max_wait_ms.
    max_parked_heartbeats: int = 10_000


@dataclass
class Member:
    member_id: str
    instance_id: str | None
    client_id: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: list[tuple[str, bytes]]
    server_assignor: str | None = None
    topics: list[str] = field(default_factory=list)
    owned: list[TopicPartition] = field(default_factory=list)
    assignment: bytes = b""
    assigned: list[TopicPartition] = field(default_factory=list)
    deadline_ms: int = 0
    join_token: Any = None
    sync_token: Any = None
    # A parked (long-poll) heartbeat and when its wait ends; never persisted.
    heartbeat_token: Any = None
    heartbeat_deadline_ms: int = 0
    client_host: str = ""

    def metadata_for(self, protocol: str) -> bytes:
        for name, meta in self.protocols:
            if name == protocol:
                return meta
        return b""

    @property
    def awaiting(self) -> bool:
        return self.join_token is not None or self.sync_token is not None

    def heartbeat_due_ms(self) -> int:
        """When the parked heartbeat must be answered: its wait's end, or earlier if the
        session would otherwise pass half its length unanswered (a rejoin with a shorter
        session.timeout.ms while it waits)."""
        return min(self.heartbeat_deadline_ms, self.deadline_ms - self.session_timeout_ms // 2)


@dataclass
class Group:
    group_id: str
    state: GroupState = GroupState.EMPTY
    generation: int = 0
    protocol_type: str | None = None
    protocol: str | None = None
    leader: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    static: dict[str, str] = field(default_factory=dict)  # instance id -> member id
    join_deadline_ms: int = 0
    sync_deadline_ms: int = 0
    initial_delay: bool = False
    server_mode: bool = False

    def transition(self, to: GroupState) -> None:
        if self.state not in _VALID_PREVIOUS[to]:
            raise AssertionError(f"group {self.group_id}: illegal transition {self.state} -> {to}")
        self.state = to

    def rebalance_timeout_ms(self) -> int:
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0)

    def all_joined(self) -> bool:
        return all(m.join_token is not None for m in self.members.values())

    def candidate_protocols(self) -> set[str]:
        sets = [{name for name, _ in m.protocols} for m in self.members.values()]
        return set.intersection(*sets) if sets else set()

    def select_protocol(self) -> str:
        """Kafka's vote: each member votes for its first protocol every member supports."""
        candidates = self.candidate_protocols()
        votes: dict[str, int] = {}
        for member in self.members.values():
            choice = next(name for name, _ in member.protocols if name in candidates)
            votes[choice] = votes.get(choice, 0) + 1
        return max(sorted(votes), key=lambda name: votes[name])

    def encode(self) -> bytes:
        return cbor2.dumps(
            {
                "state": self.state.value,
                "generation": self.generation,
                "protocol_type": self.protocol_type,
                "protocol": self.protocol,
                "leader": self.leader,
                "server_mode": self.server_mode,
                "members": [
                    {
                        "member_id": m.member_id,
                        "instance_id": m.instance_id,
                        "client_id": m.client_id,
                        "session_timeout_ms": m.session_timeout_ms,
                        "rebalance_timeout_ms": m.rebalance_timeout_ms,
                        "protocols": [[n, p] for n, p in m.protocols],
                        "server_assignor": m.server_assignor,
                        "topics": m.topics,
                        "assignment": m.assignment,
                        "assigned": [[tp.topic, tp.partition] for tp in m.assigned],
                        "client_host": m.client_host,
                    }
                    for m in self.members.values()
                ],
            }
        )

    @classmethod
    def decode(cls, group_id: str, raw: bytes, now_ms: int) -> Group:
        data = cbor2.loads(raw)
        group = cls(
            group_id,
            GroupState(data["state"]),
            data["generation"],
            data["protocol_type"],
            data["protocol"],
            data["leader"],
        )
        group.server_mode = data.get("server_mode", False)
        for m in data["members"]:
            member = Member(
                m["member_id"],
                m["instance_id"],
                m["client_id"],
                m["session_timeout_ms"],
                m["rebalance_timeout_ms"],
                [(n, p) for n, p in m["protocols"]],
                m.get("server_assignor"),
                list(m.get("topics") or []),
                assignment=m["assignment"],
                assigned=[TopicPartition(t, p) for t, p in m.get("assigned", [])],
                deadline_ms=now_ms + m["session_timeout_ms"],
                client_host=m.get("client_host", ""),
            )
            group.members[member.member_id] = member
            if member.instance_id:
                group.static[member.instance_id] = member.member_id
        return group
