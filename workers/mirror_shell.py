"""The mirror's shell: the IO around :class:`~workers.mirror_core.MirrorCore`.

It reads the source (the local kvlog) with kvlog's own Consumer (whole batches as record
columns), writes the target with kvlog's Kafka batch client (workers/mirror_target.py:
each chunk of source records becomes part of one Kafka RecordBatch, built in C, with a
``kvlog.mirror`` header per record), administers the target through Kafka mode's Admin
(topics created with the source's partition count and configs, group offsets), keeps the
state dir's files (workers/mirror_files.py) and reads the clock. Every decision is the
core's.

A run: lock the state dir; then, until stopped, *start* (list the mirrored topics,
create what the target lacks, wait until the target's partitions stop moving if the last
stop was not clean, read each target partition's tail to learn where each feed stopped,
get a producer id, seek the source there, commit the retention hold) and *loop* (poll
the source, send what the core says, read the answers, tick). A resync, new topics or a
target that went away mid-start start again; while the target is unreachable the start
waits with backoff and the status says so. SIGTERM (``stop()``) ends the loop after the
batches in flight are answered (up to a few seconds) and leaves a clean state.

Owned by one thread (the mirror process's main thread).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from kvlog import clock
from kvlog.errors import (
    AuthenticationFailedError,
    AuthorizationError,
    KvlogError,
    OffsetOutOfRangeError,
    TopicAlreadyExistsError,
)
from kvlog.ipc.consumer_types import OffsetAndMetadata
from kvlog.retention import RETENTION_HOLD
from kvlog.types import TopicPartition

from .mirror_batches import chunks, encode
from .mirror_core import Failure, MirrorCore, MirrorResult
from .mirror_files import StateDir, waiting_status
from .mirror_groups import sync_groups
from .mirror_model import (
    MirrorSpec,
    OffsetMap,
    plan_targets,
    target_partition,
    tp_from_key,
    tp_key,
)
from .mirror_target import Completion, TargetLink, record_set

log = logging.getLogger("kvlog.mirror")

_POLL_RECORDS = 4_000
_STATUS_INTERVAL_MS = 1_000
_STOP_GRACE_S = 5.0
_RECORD_OVERHEAD = 12  # bytes per record besides key and value (varints, attributes)


class _Restart(Exception):
    """Start again (a resync, new topics, the target gone during start)."""


class Mirror:
    """One mirror run (module docstring). ``stop()`` may be called from a signal handler."""

    def __init__(self, spec: MirrorSpec, *, now_ms: Callable[[], int] = clock.now_ms) -> None:
        self.spec = spec
        self.now_ms = now_ms
        self.files = StateDir(spec.state_dir)
        self.core = MirrorCore(spec, now_ms())
        self._stopping = False
        self.exit_code = 0
        self._source: Any = None
        self._source_admin: Any = None
        self._target_admin: Any = None
        self.link: TargetLink | None = None
        self.routes: dict[TopicPartition, TopicPartition] = {}
        self._topics: dict[str, str] = {}
        self._source_ends: dict[TopicPartition, int] = {}
        self._next_status = 0
        self._target_down_since: int | None = None
        self._clean = False
        self._saved_lanes: dict[TopicPartition, int] = {}
        self._known: list[TopicPartition] = []  # the mirrored source partitions
        self._holds: dict[TopicPartition, int] = {}
        self.metrics: Any = None  # workers/metrics_mirror.py's under the supervisor

    def stop(self) -> None:
        self._stopping = True

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        """Mirror until stopped (or caught up, or failed); returns the exit code."""
        self.files.lock()
        try:
            self._load_state()
            self._open_clients()
            attempt = 0
            while not self._stopping:
                try:
                    self._start()
                    attempt = 0
                    if self._loop():
                        break
                except _Restart as why:
                    log.info("mirror %s: starting again (%s)", self.spec.name, why)
                except (AuthenticationFailedError, AuthorizationError) as exc:
                    # Waiting does not mend a refused login or a missing ACL: say so.
                    log.error("mirror %s stopped: %s", self.spec.name, exc.message)
                    self.exit_code = 1
                    raise
                except KvlogError as exc:
                    attempt += 1
                    log.debug("mirror %s: start failed", self.spec.name, exc_info=True)
                    self._waiting(exc.message, attempt)
            return self.exit_code
        finally:
            self._finish()

    def _open_clients(self) -> None:
        import kvlog

        spec = self.spec
        source = {"bootstrap_servers": spec.source, **spec.source_settings}
        self._source_admin = kvlog.Admin(**source)
        self._source = kvlog.Consumer(
            **source,
            group_id=spec.group_id,
            client_id=f"kvlog-mirror-{spec.name}",
            enable_auto_commit=False,
            auto_offset_reset="none",
            max_poll_records=_POLL_RECORDS,
        )
        from kvlog.ipc.kafka_client.settings import kafka_settings

        target = {"bootstrap_servers": spec.target, "protocol": "kafka", **spec.target_settings}
        target["request_timeout_ms"] = min(spec.request_timeout_ms, 10_000)
        self._target_admin = kvlog.Admin(**target)
        resolved = kafka_settings("admin", None, target)
        security = {
            k: v
            for k, v in resolved.librdkafka.items()
            if k.startswith(("security.", "sasl.", "ssl.", "enable.ssl."))
        }
        self.link = TargetLink(
            resolved.bootstrap,
            security,
            client_id=f"kvlog-mirror-{spec.name}",
            timeout_s=spec.request_timeout_ms / 1000,
        )

    def _waiting(self, message: str, attempt: int) -> None:
        """The target (or the source) cannot be reached: say so once, back off."""
        now = self.now_ms()
        if self._target_down_since is None:
            self._target_down_since = now
            log.warning(
                "mirror %s: waiting for the target or the source (%s); retrying with backoff",
                self.spec.name,
                message,
            )
        try:
            self._publish(
                {
                    **self._waiting_status(now, self._target_down_since),
                    "pid": os.getpid(),
                    "updated_at_ms": now,
                    "source": self.spec.source,
                    "target": self.spec.target,
                    "state": "waiting",
                }
            )
        except (KvlogError, OSError) as exc:
            log.debug("mirror %s: status while waiting: %s", self.spec.name, exc)
        delay = self.core.backoff.delay(attempt - 1) / 1000
        deadline = time.monotonic() + delay
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, delay))

    # -- start -----------------------------------------------------------------------------

    def _load_state(self) -> None:
        state = self.files.load_state()
        self.core.maps = {
            tp_from_key(k): OffsetMap.from_list(rows) for k, rows in state.get("maps", {}).items()
        }
        self._saved_lanes = {tp_from_key(k): int(v) for k, v in state.get("lanes", {}).items()}
        self._clean = bool(state.get("clean"))

    def _start(self) -> None:
        assert self.link is not None
        spec = self.spec
        self.core.stop()
        self._drop_in_flight()
        self._topics = plan_targets(spec, self._source_admin.list_topics())
        counts = {t: len(self._source_admin.describe_topic(t).partitions) for t in self._topics}
        self._known = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
        self._hold_early()
        self._create_targets(counts)
        view = self.link.refresh(self._topics.values())
        missing = [t for t in self._topics.values() if t not in view.partitions]
        if missing:
            raise KvlogError(f"target topics not ready yet: {', '.join(missing)}")
        self.routes = {
            TopicPartition(src, p): TopicPartition(tgt, target_partition(p, view.partitions[tgt]))
            for src, tgt in self._topics.items()
            for p in range(counts[src])
        }
        lanes = sorted(set(self.routes.values()))
        if not self._clean:
            self._settle(lanes)
        resume = self._resume_points(lanes)
        self.link.init_producer(lanes[0])
        catch_up = None
        if spec.until_caught_up:
            catch_up = self._source.end_offsets(list(self.routes))
        self._source.assign(list(self.routes))
        for src, offset in resume.items():
            self._source.seek(src, offset)
        self._clean = False
        self._target_down_since = None
        self._apply(self.core.start(self.routes, resume, self.now_ms(), catch_up_to=catch_up))
        log.info(
            "mirror %s: forwarding %d partition(s) of %d topic(s) to %s",
            spec.name,
            len(self.routes),
            len(self._topics),
            spec.target,
        )

    def _hold_early(self) -> None:
        """Hold retention on every mirrored partition before the target is reached: at
        the mirror's committed progress, or at the log start for a partition it never
        forwarded (a new mirror, a new topic)."""
        self._holds = {}
        for tp in self._known:
            found = self._source.committed(tp)
            if found is not None:
                self._holds[tp] = found
        missing = [tp for tp in self._known if tp not in self._holds]
        if missing:
            starts = self._source.beginning_offsets(missing)
            self._holds.update(starts)
            self._commit_hold(starts)

    def _waiting_status(self, now: int, since: int) -> dict[str, Any]:
        """Lag while no run is up: from the committed progress to the source's end, and
        the age of the first record not forwarded (read from the source)."""
        ends = self._source.end_offsets(self._known) if self._known else {}
        stamps = self._first_timestamps(
            {tp: o for tp, o in self._holds.items() if o < ends.get(tp, 0)}
        )
        return waiting_status(
            self.spec.name, self._known, self._holds, ends, stamps, now, since, self.core.forwarded
        )

    def _first_timestamps(self, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The timestamp of the record at each offset, read with the source consumer."""
        if not offsets:
            return {}
        out: dict[TopicPartition, int] = {}
        self._source.assign(list(offsets))
        for tp, offset in offsets.items():
            self._source.seek(tp, offset)
        deadline = time.monotonic() + 2
        while len(out) < len(offsets) and time.monotonic() < deadline:
            for tp, run in self._source.poll_batch(timeout_ms=200, max_records=1).items():
                out.setdefault(tp, run.timestamps[0])
        return out

    def _create_targets(self, counts: dict[str, int]) -> None:
        existing = set(self._target_admin.list_topics())
        for src, tgt in self._topics.items():
            if tgt in existing:
                continue
            overrides = self._source_admin.describe_topic(src).overrides
            try:
                self._target_admin.create_topic(
                    tgt, partitions=counts[src], replication_factor=-1, config=overrides
                )
                log.info(
                    "mirror %s: created %s on the target (%d partitions, %s)",
                    self.spec.name,
                    tgt,
                    counts[src],
                    overrides or "default configs",
                )
            except TopicAlreadyExistsError:
                pass

    def _settle(self, lanes: list[TopicPartition]) -> None:
        """Wait until the target partitions stop moving: a previous run's last requests
        land (or do not) before their tails are read."""
        assert self.link is not None
        before = self.link.end_offsets(lanes)
        for _ in range(30):
            deadline = time.monotonic() + self.spec.settle_ms / 1000
            while time.monotonic() < deadline and not self._stopping:
                time.sleep(0.05)
            after = self.link.end_offsets(lanes)
            if after == before:
                return
            before = after
        raise KvlogError("the target partitions keep moving: is another writer there?")

    def _resume_points(self, lanes: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Where each feed goes on: after the last of its records on the target (read
        back from the tail), else from the mirror's committed progress."""
        assert self.link is not None
        ends = self.link.end_offsets(lanes)
        starts = self.link.start_offsets(lanes)
        feeds_of: dict[TopicPartition, list[TopicPartition]] = {}
        for src, tgt in self.routes.items():
            feeds_of.setdefault(tgt, []).append(src)
        for lane in lanes:
            saved = self._saved_lanes.get(lane)
            if saved is not None and saved > ends[lane]:
                log.warning(
                    "mirror %s: %s on the target ends at %d, before the %d this mirror "
                    "wrote (the topic was recreated or lost records): forwarding its feeds "
                    "again from what the target holds",
                    self.spec.name,
                    tp_key(lane),
                    ends[lane],
                    saved,
                )
                for src in feeds_of[lane]:
                    self.core.maps.pop(src, None)
                saved = None
            if saved is None:
                low = self._tail_start(lane, feeds_of[lane], starts[lane], ends[lane])
            else:
                low = max(starts[lane], saved)
            self._learn(lane, self.link.read(lane, low, ends[lane]))
        resume = {}
        for src in self.routes:
            known = self.core.maps.get(src)
            after = known.next_source if known is not None else None
            # No trace on the target: the committed progress (a new mirror committed the
            # log start; below today's log start, the first fetch finds the gap).
            resume[src] = after if after is not None else self._holds[src]
        return resume

    def _tail_start(
        self, lane: TopicPartition, feeds: list[TopicPartition], start: int, end: int
    ) -> int:
        """Without saved state: how far back the tail must be read for the last record of
        every feed (windows growing back from the end)."""
        assert self.link is not None
        window = 1_000
        low = end
        wanted = {src.partition for src in feeds}
        while low > start:
            low = max(start, end - window)
            found = {m[0] for _, _, m in self.link.read(lane, low, min(end, low + window)) if m}
            wanted -= found
            if not wanted:
                break
            window *= 4
        return low

    def _learn(self, lane: TopicPartition, batches: list[tuple[int, int, Any]]) -> None:
        """Offset-map segments from the target's batches: each is one feed's run of
        consecutive source offsets, ending at its marker's."""
        source_topic = next((s for s, t in self._topics.items() if t == lane.topic), lane.topic)
        for base, count, marker in batches:
            if marker is None:
                continue
            partition, last = marker
            offset_map = self.core.maps.setdefault(
                TopicPartition(source_topic, partition), OffsetMap()
            )
            offset_map.add(range(last - count + 1, last + 1), base)

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> bool:
        """Forward until stopped, caught up or failed (True), or a restart."""
        assert self.link is not None
        while True:
            if self._stopping:
                self._drain()
                return True
            busy = self.link.in_flight
            try:
                runs = self._source.poll_batch(timeout_ms=0 if busy else 20)
            except OffsetOutOfRangeError:
                self._gaps()
                continue
            now = self.now_ms()
            for src, run in runs.items():
                for chunk in chunks(src, run):
                    if self._apply(self.core.fetched(chunk, now)):
                        return True
            for completion in self.link.poll(0.002 if busy else 0.0):
                if self._complete(completion):
                    return True
            if self._apply(self.core.tick(self.now_ms())):
                return True

    def _complete(self, done: Completion) -> bool:
        now = self.now_ms()
        if done.kind is None:
            return self._apply(self.core.acked(done.batch_id, done.base_offset, now))
        return self._apply(self.core.failed_send(done.batch_id, done.kind, done.message, now))

    def _gaps(self) -> None:
        """The source deleted records before they were fetched: tell the core which."""
        starts = self._source.beginning_offsets(list(self.core.feeds))
        now = self.now_ms()
        for src, feed in self.core.feeds.items():
            if feed.fetched < starts[src]:
                self._apply(self.core.gap(src, feed.fetched, starts[src], now))
            else:
                self._source.seek(src, feed.fetched)

    def _apply(self, result: MirrorResult) -> bool:
        """Carry out what the core decided; True when the run ends (done or failed)."""
        for level, message in result.logs:
            log.log(level, "%s", message)
        for src in result.pause:
            self._source.pause(src)
        for src in result.resume:
            self._source.resume(src)
        for src, offset in result.seek.items():
            self._source.seek(src, offset)
        if result.sends:
            self._send(result)
        if result.commit_hold is not None:
            self._commit_hold(result.commit_hold)
        if result.save_state:
            self._save_state(clean=False)
        if result.sync_groups:
            self._sync_groups(last=result.done)
        now = self.now_ms()
        self._write_status(now)
        if result.fatal is not None:
            log.error("mirror %s stopped: %s", self.spec.name, result.fatal)
            self.exit_code = 1
            self._write_status(now, force=True)
            return True
        if result.done:
            log.info("mirror %s: caught up; stopping", self.spec.name)
            self._stopping = True
            self._drain()
            return True
        if result.resync is not None:
            raise _Restart(result.resync)
        if result.refresh_topics and self._new_topics():
            raise _Restart("new topics to mirror")
        return False

    def _send(self, result: MirrorResult) -> None:
        assert self.link is not None
        if self.link.stale:
            try:
                self.link.refresh(self._topics.values())
            except KvlogError as exc:
                log.debug("target metadata refresh failed: %s", exc.message)
        pid, epoch = self.link.producer_id, self.link.producer_epoch
        # A request names a partition once: a lane's next batch goes in the next request.
        waves: dict[int, list[tuple[int, TopicPartition, bytes]]] = {}
        per_lane: dict[TopicPartition, int] = {}
        for batch in result.sends:
            if batch.payload is None:
                batch.payload = record_set(encode(batch.chunks, pid, epoch, batch.base_sequence))
            wave = per_lane[batch.lane] = per_lane.get(batch.lane, -1) + 1
            waves.setdefault(wave, []).append((batch.id, batch.lane, batch.payload))
        for wave in waves.values():  # in order: wave 0 first (same connection, same order)
            for failed in self.link.send(wave, self.spec.request_timeout_ms):
                self._complete(failed)

    def _drain(self) -> None:
        """Stopping: wait (briefly) for the answers to what is in flight."""
        assert self.link is not None
        deadline = time.monotonic() + _STOP_GRACE_S
        while self.link.in_flight and time.monotonic() < deadline:
            for completion in self.link.poll(0.05):
                now = self.now_ms()
                if completion.kind is None:
                    self.core.acked(completion.batch_id, completion.base_offset, now)
        self._clean = not self.link.in_flight

    def _drop_in_flight(self) -> None:
        if self.link is not None:
            self.link.close()

    def _new_topics(self) -> bool:
        try:
            topics = plan_targets(self.spec, self._source_admin.list_topics())
        except KvlogError:
            return False
        return topics != self._topics

    # -- durable progress and groups -------------------------------------------------------

    def _commit_hold(self, offsets: dict[TopicPartition, int]) -> None:
        """The mirror group's committed offsets: with the hold marker, retention keeps
        every record from there (without it, --allow-gaps, they only record progress)."""
        marker = "" if self.spec.allow_gaps else RETENTION_HOLD
        try:
            self._source.commit({tp: OffsetAndMetadata(o, marker) for tp, o in offsets.items()})
        except KvlogError as exc:
            log.debug("mirror %s: committing progress failed: %s", self.spec.name, exc.message)

    def _save_state(self, *, clean: bool) -> None:
        lanes: dict[str, int] = {}
        for src, feed in self.core.feeds.items():
            end = self.core.maps[src].next_target if src in self.core.maps else None
            if end is not None:
                lanes[tp_key(feed.lane)] = max(lanes.get(tp_key(feed.lane), 0), end)
        self._saved_lanes = {tp_from_key(k): v for k, v in lanes.items()}
        self.files.save_state(
            {
                "name": self.spec.name,
                "target": self.spec.target,
                "maps": {tp_key(src): m.to_list() for src, m in self.core.maps.items()},
                "lanes": lanes,
                "clean": clean,
            }
        )

    def _sync_groups(self, *, last: bool = False) -> None:
        """One group offset sync; a migration's ``last`` one retries what failed for a
        while (the group would otherwise start over on the target) and says so."""
        deadline = time.monotonic() + (self.spec.request_timeout_ms / 1000 if last else 0)
        while True:
            failed = sync_groups(
                self.spec, self._source_admin, self._target_admin, self.core.maps, self.routes
            )
            if not failed or time.monotonic() >= deadline or self._stopping:
                break
            time.sleep(0.2)
        if failed and last:
            log.warning("mirror %s: group offsets not synced: %s", self.spec.name, failed)

    def _write_status(
        self, now: int, *, force: bool = False, unreachable: int | None = None
    ) -> None:
        if not force and now < self._next_status:
            return
        self._next_status = now + _STATUS_INTERVAL_MS
        if self.core.feeds:
            try:
                self._source_ends = self._source.end_offsets(list(self.core.feeds))
            except KvlogError:
                pass
        status = self.core.status(now, self._source_ends)
        status.update(
            {
                "pid": os.getpid(),
                "updated_at_ms": now,
                "source": self.spec.source,
                "target": self.spec.target,
                "state": "failed" if self.exit_code else "running",
            }
        )
        try:
            self._publish(status)
        except OSError as exc:
            log.debug("status file: %s", exc)

    def _publish(self, status: dict[str, Any]) -> None:
        """The status for ``kvlog mirror status`` and, under the supervisor, metrics."""
        self.files.write_status(status)
        if self.metrics is not None:
            self.metrics.observe(status)

    def _finish(self) -> None:
        try:
            if self.core.feeds:
                self._commit_hold(self.core.holds())
                self._save_state(clean=self._clean and self.core.idle())
            now = self.now_ms()
            status = self.core.status(now, self._source_ends)
            status.update({"pid": None, "updated_at_ms": now, "state": "stopped"})
            if self.exit_code:
                status["state"] = "failed"
            self._publish(status)
        except (KvlogError, OSError) as exc:
            log.warning("mirror %s: saving its state on stop failed: %s", self.spec.name, exc)
        finally:
            for client in (self._source, self._source_admin, self._target_admin):
                if client is not None:
                    try:
                        client.close()
                    except KvlogError:
                        pass
            if self.link is not None:
                self.link.close()
            self.files.unlock()


__all__ = ["Failure", "Mirror"]
