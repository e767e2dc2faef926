"""The node process: one per log dir; leads partitions, serves produce and fetch.

A thin shell around :class:`workers.leader_core.LeaderCore`: it turns ROUTER frames into core
calls and core results into replies. Each loop turn drains every waiting request, then
commits all staged produce batches in one transaction (group commit) and answers them,
then answers the long-poll fetches the new data satisfies.

It heartbeats the coordinator (a long poll: the coordinator answers at once when the
metadata changed, else after ``wait_ms``) and applies the partition assignment it gets.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from kvlog import clock
from kvlog.errors import (
    InvalidRequestError,
    KvlogError,
    MessageSizeTooLargeError,
    ThrottlingQuotaExceededError,
)
from kvlog.ipc.wire import INT32_MAX, Request, advertise, check_int, check_map, check_str
from kvlog.lmdb_store import LogDir
from kvlog.producer_state import delete_producer
from kvlog.types import TopicPartition, check_partition

from .follower_core import FollowerCore, FollowTarget
from .leader_core import FetchPartition, HostedPartition, LeaderCore, StagedProduce
from .quotas import InflightLimit, Quotas
from .replication_core import LeaderReplica
from .security import ServerSecurity
from .settings import NodeSettings
from .zmq_peer import PeerLink, first_deadline
from .zmq_server import Server

log = logging.getLogger(__name__)

MAX_PARKED_FETCHES = 10_000
PROBE_HEADROOM = 1 << 20  # room a failed log dir needs before it is tried again


def _headroom(log_dir: str) -> int:
    """Bytes the log dir's data file can still grow: free disk space, capped by this
    process's file-size limit (RLIMIT_FSIZE)."""
    path = Path(log_dir)
    try:
        fs = os.statvfs(path)
        room = fs.f_bavail * fs.f_frsize
        soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            room = min(room, soft - (path / "data.mdb").stat().st_size)
    except OSError:
        return 0
    return room


@dataclass
class ParkedFetch:
    peer: bytes
    request_id: int
    partitions: list[FetchPartition]
    max_bytes: int
    min_bytes: int
    deadline: float
    replica_id: int
    principal: str = ""

    def wants(self, touched: set[TopicPartition]) -> bool:
        return any(p.tp in touched for p in self.partitions)


def _tp(entry: object, where: str) -> TopicPartition:
    if isinstance(entry, dict):
        topic, partition = entry.get("topic"), entry.get("partition")
    elif isinstance(entry, list) and len(entry) == 2:
        topic, partition = entry
    else:
        raise InvalidRequestError(f"{where}: each entry must be [topic, partition] or a map")
    return TopicPartition(
        check_str(topic, f"{where}.topic", max_len=249), check_partition(partition)
    )


class NodeServer(Server):
    name = "node"

    def __init__(
        self,
        ctx: zmq.Context[Any],
        router: zmq.Socket[Any],
        endpoint: str,
        settings: NodeSettings,
        store: LogDir,
        security: ServerSecurity | None = None,
    ) -> None:
        super().__init__(ctx, router, security)
        self.link_options = security.client_options() if security else None
        self.name = f"node {settings.node_id}"
        self.settings = settings
        self.endpoint = advertise(endpoint, settings.advertised_host)
        self.core = LeaderCore(
            settings.node_id, store, lag_time_max_ms=settings.replica_lag_time_max_ms
        )
        self.follower = FollowerCore(self.core)
        self.node_endpoints: dict[int, str] = {}
        self.leader_links: dict[int, PeerLink] = {}
        self._fetching: set[int] = set()  # leader ids with a replica fetch in flight
        self._fetch_retry_at: dict[int, float] = {}
        self._stale_links: set[int] = set()  # leader links to replace (see _drop_stale_fetches)
        self._isr_in_flight: set[TopicPartition] = set()
        self._next_isr_check = 0.0
        self._next_hw_flush = 0.0
        self.offline = False
        self._next_producer_expiry = time.monotonic() + 600.0
        self._next_probe = 0.0
        self._probe_interval = 1.0
        self._online_since = 0.0
        self._heartbeat_id = 0
        self.parked: list[ParkedFetch] = []
        self.applied_version = -1
        self.coordinator = PeerLink(
            ctx, settings.coordinator, name=f"{self.name} -> coordinator", options=self.link_options
        )
        self.add_socket(self.coordinator.socket, self.coordinator.on_readable)
        self._heartbeat_in_flight = False
        self._drop_replies = settings.test_drop_produce_replies
        # Quotas are per principal, so they apply when security gives principals.
        self.quotas = Quotas(
            settings.quota_producer_byte_rate if security else -1,
            settings.quota_consumer_byte_rate if security else -1,
        )
        self.inflight = InflightLimit(settings.max_inflight_requests_per_client)
        self.delayed: list[tuple[float, bytes, int, dict[str, Any], list[bytes]]] = []
        self._send_heartbeat()

    # -- coordinator link ------------------------------------------------------------------

    def _send_heartbeat(self) -> None:
        self._heartbeat_in_flight = True
        self._heartbeat_id += 1
        heartbeat_id = self._heartbeat_id
        wait = self.settings.heartbeat_wait_ms
        self.coordinator.request(
            "node_heartbeat",
            {
                "node_id": self.settings.node_id,
                "endpoint": self.endpoint,
                "log_dir": self.settings.log_dir,
                "applied_version": self.applied_version,
                "pid": os.getpid(),
                "wait_ms": wait,
                "offline": self.offline,
            },
            lambda header, frames, error: self._on_heartbeat(heartbeat_id, header, frames, error),
            timeout_ms=wait + 2000,
        )

    def _on_heartbeat(
        self,
        heartbeat_id: int,
        header: dict[str, Any] | None,
        frames: list[bytes],
        error: KvlogError | None,
    ) -> None:
        if heartbeat_id != self._heartbeat_id:
            return  # superseded by a newer heartbeat (the offline flag changed)
        self._heartbeat_in_flight = False
        if header is None:  # timed out: the coordinator may be restarting
            log.debug("%s: heartbeat: %s", self.name, error)
            return
        if error is not None:
            log.warning("%s: heartbeat refused: %s", self.name, error.message)
            return
        if "partitions" in header:
            try:
                self._apply_assignment(header)
            except KvlogError as exc:
                log.error("%s: cannot apply assignment: %s", self.name, exc.message)
                return
            self.applied_version = header.get("version", self.applied_version)

    def _apply_assignment(self, header: dict[str, Any]) -> None:
        hosted = [
            HostedPartition(
                tp=TopicPartition(p["topic"], p["partition"]),
                topic_id=p["topic_id"],
                leader_id=p["leader"],
                leader_epoch=p["leader_epoch"],
                replicas=list(p["replicas"]),
                config=dict(p.get("config") or {}),
                isr=list(p.get("isr") or []),
            )
            for p in header["partitions"]
        ]
        self.node_endpoints = {int(n): str(ep) for n, ep in header.get("nodes", [])}
        followed = self._followed()
        self.core.apply_assignment(hosted, header.get("deleted_topic_ids", []), clock.now_ms())
        self._drop_stale_fetches(followed)
        self._answer_decided()
        log.info(
            "%s: hosting %d partition(s), metadata version %s",
            self.name,
            len(hosted),
            header.get("version"),
        )

    # -- produce ---------------------------------------------------------------------------

    def op_produce(self, req: Request, peer: bytes) -> None:
        acks = req.int("acks", -1, low=-1, high=1)
        timeout_ms = req.int("timeout_ms", 30_000, low=0, high=INT32_MAX)
        entries = req.list("partitions", max_len=100_000)
        if len(entries) != len(req.frames):
            raise InvalidRequestError(
                f"produce lists {len(entries)} partitions but carries {len(req.frames)} "
                "batch frames; each partition entry needs exactly one frame"
            )
        total = sum(len(f) for f in req.frames)
        if total > self.settings.message_max_bytes:
            raise MessageSizeTooLargeError(
                f"produce request of {total} bytes exceeds the broker's message.max.bytes="
                f"{self.settings.message_max_bytes}; send smaller requests (max.request.size)"
            )
        pairs = [
            (_tp(e, "partitions"), frame) for e, frame in zip(entries, req.frames, strict=True)
        ]
        token = (peer, req.id, self.principal, total)
        self._acquire(peer)  # after every check that can refuse the request
        self.core.stage_produce(token, acks, pairs, timeout_ms)
        return None

    def _acquire(self, peer: bytes) -> None:
        if not self.inflight.try_acquire(peer):
            raise ThrottlingQuotaExceededError(
                f"this client has {self.inflight.limit} requests waiting at {self.name} "
                "(max.inflight.requests.per.client); wait for replies before sending more"
            )

    def _reply_throttled(
        self,
        kind: str,
        peer: bytes,
        rid: int,
        principal: str,
        nbytes: int,
        fields: dict[str, Any],
        frames: list[bytes],
    ) -> None:
        """Reply now, or later if the principal is over its byte-rate quota."""
        self.inflight.release(peer)
        now = time.monotonic()
        delay = self.quotas.throttle(kind, principal, nbytes, now) if principal else 0.0
        fields["throttle_time_ms"] = int(delay * 1000)
        if delay <= 0:
            self.reply(peer, rid, fields, frames)
        else:
            self.delayed.append((now + delay, peer, rid, fields, frames))

    def _answer_produce(self, staged: StagedProduce) -> None:
        peer, rid, principal, nbytes = staged.token
        if staged.acks == 0:
            self.inflight.release(peer)
            return
        if self._drop_replies > 0:
            self._drop_replies -= 1
            self.inflight.release(peer)
            log.warning("%s: test hook: dropping a produce reply", self.name)
            return
        self._reply_throttled(
            "produce", peer, rid, principal, nbytes, {"results": staged.results()}, []
        )

    def _answer_decided(self) -> None:
        decided, self.core.decided = self.core.decided, []
        for staged in decided:
            self._answer_produce(staged)

    def after_drain(self) -> None:
        if self.core.has_staged:
            for staged in self.core.commit(clock.now_ms()):
                self._answer_produce(staged)
        self._answer_decided()
        if self.core.touched and self.parked:
            touched, self.core.touched = self.core.touched, set()
            still = []
            for parked in self.parked:
                if parked.wants(touched) and self._try_answer(parked, final=False):
                    continue
                still.append(parked)
            self.parked = still
        else:
            self.core.touched.clear()

    # -- fetch -----------------------------------------------------------------------------

    def op_fetch(self, req: Request, peer: bytes) -> None:
        # Longer waits than the node allows are shortened, not refused (clients retry).
        max_wait_ms = min(
            req.int("max_wait_ms", 500, low=0, high=INT32_MAX), self.settings.fetch_max_wait_ms
        )
        min_bytes = req.int("min_bytes", 1, low=0, high=INT32_MAX)
        max_bytes = req.int("max_bytes", 50 << 20, low=1, high=INT32_MAX)
        replica_id = req.int("replica_id", -1, low=-1, high=INT32_MAX)
        parts = []
        for i, entry in enumerate(req.list("partitions", max_len=100_000)):
            where = f"partitions[{i}]"
            entry = check_map(entry, where)
            parts.append(
                FetchPartition(
                    _tp(entry, where),
                    check_int(entry.get("offset"), f"{where}.offset", low=0),
                    check_int(
                        entry.get("max_bytes", 1 << 20), f"{where}.max_bytes", low=1, high=INT32_MAX
                    ),
                    check_int(
                        entry.get("last_fetched_epoch", -1),
                        f"{where}.last_fetched_epoch",
                        low=-1,
                        high=INT32_MAX,
                    ),
                    check_int(
                        entry.get("leader_epoch", -1),
                        f"{where}.leader_epoch",
                        low=-1,
                        high=INT32_MAX,
                    ),
                )
            )
        parked = ParkedFetch(
            peer,
            req.id,
            parts,
            max_bytes,
            min_bytes,
            time.monotonic() + max_wait_ms / 1000,
            replica_id,
            self.principal if replica_id < 0 else "",  # replication is never throttled
        )
        self._acquire(peer)
        if max_wait_ms == 0 or len(self.parked) >= MAX_PARKED_FETCHES:
            self._try_answer(parked, final=True)
        elif not self._try_answer(parked, final=False):
            self.parked.append(parked)
        return None

    def _try_answer(self, parked: ParkedFetch, *, final: bool) -> bool:
        results = self.core.fetch(
            parked.partitions, parked.max_bytes, replica_id=parked.replica_id, now_ms=clock.now_ms()
        )
        size = sum(r.size for r in results)
        decided = any(r.error or r.diverging for r in results)
        if not final and size < parked.min_bytes and not decided:
            return False
        frames = [batch for r in results for _, batch in r.batches]
        self._reply_throttled(
            "fetch",
            parked.peer,
            parked.request_id,
            parked.principal,
            size,
            {"partitions": [r.header() for r in results]},
            frames,
        )
        return True

    # -- offsets ---------------------------------------------------------------------------

    def op_list_offsets(self, req: Request, peer: bytes) -> dict[str, Any]:
        out = []
        for i, entry in enumerate(req.list("partitions", max_len=100_000)):
            where = f"partitions[{i}]"
            entry = check_map(entry, where)
            tp = _tp(entry, where)
            timestamp = check_int(entry.get("timestamp", -1), f"{where}.timestamp")
            item: dict[str, Any] = {"topic": tp.topic, "partition": tp.partition}
            try:
                offset, ts = self.core.list_offset(tp, timestamp)
                item.update(error=0, offset=offset, timestamp=ts)
            except KvlogError as exc:
                item.update(error=int(exc.code), message=exc.message, offset=-1, timestamp=-1)
            out.append(item)
        return {"partitions": out}

    def op_ping(self, req: Request, peer: bytes) -> dict[str, Any]:
        return {"node_id": self.settings.node_id, "metadata_version": self.applied_version}

    # -- timers ----------------------------------------------------------------------------

    def next_timeout_ms(self, now: float) -> float:
        deadline = first_deadline(
            self.coordinator.next_deadline(),
            min((p.deadline for p in self.parked), default=None),
            *(link.next_deadline() for link in self.leader_links.values()),
            min((d[0] for d in self.delayed), default=None),
        )
        if not self._heartbeat_in_flight:
            return 0.0
        if self.core.leaders and any(r.waiters for r in self.core.leaders.values()):
            deadline = first_deadline(deadline, now + 0.05)
        if deadline is None:
            return 100.0
        # Rounded up to whole ms: the poller truncates, and a wait of 0 ms until a
        # deadline under 1 ms away would spin.
        return float(math.ceil(max(0.0, min(100.0, (deadline - now) * 1000))))

    def on_timers(self, now: float) -> None:
        self.coordinator.expire(now)
        if self.delayed:
            due = [d for d in self.delayed if d[0] <= now]
            if due:
                self.delayed = [d for d in self.delayed if d[0] > now]
                for _, peer, rid, fields, frames in due:
                    self.reply(peer, rid, fields, frames)
        for link in self.leader_links.values():
            link.expire(now)
        if not self._heartbeat_in_flight and not self.stopping:
            self._send_heartbeat()
        self._check_storage(now)
        for leader_id in self._stale_links:
            log.debug("%s: dropping the replica fetch in flight to node %d", self.name, leader_id)
            self._drop_link(leader_id)
        self._stale_links.clear()
        if not self.offline:
            self._fetch_from_leaders(now)
        now_ms = clock.now_ms()
        self.core.poll_waiters(now_ms)
        self._answer_decided()
        if now >= self._next_isr_check:
            self._next_isr_check = now + 0.25
            self._propose_isr_changes(now_ms)
        if now >= self._next_producer_expiry:
            self._next_producer_expiry = now + 600.0
            self._expire_producers(now_ms)
        if self.core.hw_dirty and now >= self._next_hw_flush:
            self._next_hw_flush = now + 0.2
            self.core.flush_high_watermarks()
        if self.parked:
            due = [p for p in self.parked if p.deadline <= now]
            if due:
                self.parked = [p for p in self.parked if p.deadline > now]
                for parked in due:
                    self._try_answer(parked, final=True)

    # -- replication: following --------------------------------------------------------------

    def _followed(self) -> dict[TopicPartition, tuple[int, int]]:
        """(leader, leader epoch) of every partition this node follows."""
        return {
            tp: (h.leader_id, h.leader_epoch)
            for tp, h in self.core.hosted.items()
            if h.leader_id != self.settings.node_id
        }

    def _drop_stale_fetches(self, before: dict[TopicPartition, tuple[int, int]]) -> None:
        """Leadership moved: drop the replica fetch in flight to every leader concerned.

        A fetch parked at a leader that then died is never answered; it would block
        fetching from that node (one fetch per leader) until its timeout (5.5 s), and if
        that node leads again by then (restarted and re-elected, or elected after another
        kill) the high watermark and every acks=all request wait for it. A fetch parked
        at a live leader does not cover a partition it just took over either (up to
        replica.fetch.wait.max.ms). So the link is replaced and a new fetch goes now.
        """
        after = self._followed()
        moved = {lid for tp, (lid, _) in before.items() if after.get(tp) != before[tp]}
        moved |= {lid for tp, (lid, _) in after.items() if before.get(tp) != after[tp]}
        # Dropped on the next timer turn: this runs inside the poll loop's dispatch, which
        # may still hold the link's socket among its ready sockets.
        self._stale_links |= moved & self._fetching

    def _drop_link(self, leader_id: int) -> None:
        link = self.leader_links.pop(leader_id, None)
        if link is not None:
            self.poller.unregister(link.socket)
            del self._socket_handlers[link.socket]
            link.close()
        self._fetching.discard(leader_id)
        self._fetch_retry_at.pop(leader_id, None)

    def _link(self, leader_id: int) -> PeerLink | None:
        endpoint = self.node_endpoints.get(leader_id)
        if endpoint is None:
            return None
        link = self.leader_links.get(leader_id)
        if link is not None and link.endpoint != endpoint:
            self._drop_link(leader_id)
            link = None
        if link is None:
            link = PeerLink(
                self.ctx,
                endpoint,
                name=f"{self.name} -> node {leader_id}",
                options=self.link_options,
            )
            self.leader_links[leader_id] = link
            self.add_socket(link.socket, link.on_readable)
        return link

    def _fetch_from_leaders(self, now: float) -> None:
        """Keep one replica fetch in flight to each node this node follows."""
        if self.offline or self.core.storage_failed:
            return
        targets = self.follower.targets()
        by_leader: dict[int, list[FollowTarget]] = {}
        for target in targets:
            by_leader.setdefault(target.leader_id, []).append(target)
        for leader_id, group in by_leader.items():
            if leader_id in self._fetching or self._fetch_retry_at.get(leader_id, 0.0) > now:
                continue
            link = self._link(leader_id)
            if link is None:
                continue
            self._fetching.add(leader_id)
            wait = self.settings.replica_fetch_wait_max_ms
            link.request(
                "fetch",
                {
                    "replica_id": self.settings.node_id,
                    "max_wait_ms": wait,
                    "min_bytes": 1,
                    "max_bytes": 64 << 20,
                    "partitions": [
                        {
                            "topic": t.tp.topic,
                            "partition": t.tp.partition,
                            "offset": t.offset,
                            "max_bytes": 8 << 20,
                            "last_fetched_epoch": t.last_fetched_epoch,
                            "leader_epoch": t.leader_epoch,
                        }
                        for t in group
                    ],
                },
                lambda header, frames, error, lid=leader_id, g=group: self._on_replica_data(
                    lid, g, header, frames, error
                ),
                timeout_ms=wait + 5000,
            )

    def _on_replica_data(
        self,
        leader_id: int,
        targets: list[FollowTarget],
        header: dict[str, Any] | None,
        frames: list[bytes],
        error: KvlogError | None,
    ) -> None:
        self._fetching.discard(leader_id)
        entries = (header or {}).get("partitions")
        if error is not None or not isinstance(entries, list) or len(entries) != len(targets):
            self._fetch_retry_at[leader_id] = time.monotonic() + 0.1
            log.debug("%s: replica fetch from node %d failed: %s", self.name, leader_id, error)
            return
        try:
            changed = self.follower.apply(targets, entries, frames)
        except KvlogError as exc:
            log.error("%s: replica data from node %d rejected: %s", self.name, leader_id, exc)
            changed = set()
        if any(e.get("error") for e in entries) and not changed:
            self._fetch_retry_at[leader_id] = time.monotonic() + 0.1
        # The next fetch (at the new log end offset) acknowledges what was just written.
        self._fetch_from_leaders(time.monotonic())

    # -- replication: leading ----------------------------------------------------------------

    def _propose_isr_changes(self, now_ms: int) -> None:
        for replica, isr in self.core.isr_proposals(now_ms):
            tp = replica.tp
            if tp in self._isr_in_flight:
                continue
            self._isr_in_flight.add(tp)
            log.info("%s: %s asking for ISR %s (now %s)", self.name, tp, isr, replica.isr)

            def done(
                header: dict[str, Any] | None,
                frames: list[bytes],
                error: KvlogError | None,
                replica: LeaderReplica = replica,
            ) -> None:
                self._isr_in_flight.discard(replica.tp)
                if header is None or error is not None:
                    replica.pending_isr = None
                    log.info("%s: ISR change for %s refused: %s", self.name, replica.tp, error)
                    return
                replica.isr_applied(list(header.get("isr", replica.isr)))
                self.core.hw_dirty.add(replica.tp)
                self.core.touched.add(replica.tp)
                self.core.poll_waiters(clock.now_ms(), [replica.tp])
                self._answer_decided()

            self.coordinator.request(
                "alter_isr",
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "leader": self.settings.node_id,
                    "leader_epoch": replica.leader_epoch,
                    "isr": isr,
                },
                done,
                timeout_ms=5000,
            )

    def _expire_producers(self, now_ms: int) -> None:
        """Forget idempotent producers idle for producer.id.expiration.ms (Kafka: 1 day)."""
        expired = self.core.producers.expire(now_ms, self.settings.producer_id_expiration_ms)
        if not expired:
            return

        def write(w: Any) -> None:
            for tp, producer_id in expired:
                delete_producer(w, tp, producer_id)

        try:
            self.core.store.write(write)
        except KvlogError as exc:
            log.warning("%s: could not delete expired producer state: %s", self.name, exc)
        log.info("%s: expired %d idle producer id(s)", self.name, len(expired))

    # -- a failing log dir -------------------------------------------------------------------

    def _check_storage(self, now: float) -> None:
        """A failed write takes the log dir offline: the coordinator moves leaderships
        away. Probe the disk every second; when writes work again, come back online (as a
        follower that catches up)."""
        if self.core.storage_failed and not self.offline:
            self.offline = True
            # A log dir that fails again soon after recovering is probed less often.
            recent = now - self._online_since < 30.0
            self._probe_interval = min(self._probe_interval * 2, 30.0) if recent else 1.0
            self._next_probe = now + self._probe_interval
            log.error(
                "%s: log dir %s failed; going offline until writes work again",
                self.name,
                self.settings.log_dir,
            )
            self._send_heartbeat()  # supersedes the parked one: tell the coordinator now
            return
        if not self.offline or now < self._next_probe:
            return
        self._next_probe = now + self._probe_interval
        # A small write can succeed on LMDB's free pages while the disk is still full;
        # coming back then only fails again at the next append. Ask for real room first.
        room = _headroom(self.settings.log_dir)
        if room < PROBE_HEADROOM:
            log.info("%s: log dir still full (%d bytes of room)", self.name, room)
            return
        try:
            self.core.store.write(lambda w: w.put("meta", b"probe", str(time.time_ns()).encode()))
        except KvlogError as exc:
            log.info("%s: log dir still failing: %s", self.name, exc.message)
            return
        log.warning(
            "%s: log dir %s writes again; coming back online", self.name, self.settings.log_dir
        )
        self.offline = False
        self._online_since = now
        self.core.storage_failed = False
        self.follower.latest_epoch.clear()
        self._send_heartbeat()
