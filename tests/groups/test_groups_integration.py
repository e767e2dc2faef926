"""Consumer groups end to end on a real process group (``kvlog.Broker``): the source
document's mapping cases, rebalances on join, leave and SIGKILL, listener callbacks,
commits, max.poll.interval.ms, patterns, cooperative and static membership, and a
coordinator SIGKILL.

Consumers of one group run either in this process (polled from one thread with short
timeouts) or, where a test kills one, in child processes (``_group_child.py``) that print
what they were assigned and what each poll() returned. Every wait has a deadline.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from group_procs import (
    BROKER_CONFIG,
    ChildConsumer,
    Recorder,
    consumer,
    poll_until,
    produce,
    wait_until,
)

import kvlog
from kvlog.errors import CommitFailedError, MaxPollIntervalExceededError
from kvlog.types import TopicPartition as TP


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("groups-broker")
    with kvlog.Broker(
        data_dir=data, listen="tcp://127.0.0.1:0", config=BROKER_CONFIG, console_listen="none"
    ) as b:
        yield b


@pytest.fixture
def admin(broker):
    with kvlog.Admin(bootstrap_servers=broker.bootstrap) as a:
        yield a


@pytest.fixture
def closing():
    """Consumers (and child consumers) to close whatever happens."""
    things: list = []
    yield things
    for thing in reversed(things):
        try:
            if isinstance(thing, ChildConsumer):
                thing.stop()
            else:
                thing.close(autocommit=False)
        except Exception:
            pass


def child_spec(broker, group: str, topics: list[str], **config) -> dict:
    return {
        "bootstrap": broker.bootstrap,
        "group": group,
        "topics": topics,
        "commit": "sync",
        "config": {
            "auto_offset_reset": "earliest",
            "enable_auto_commit": False,
            "session_timeout_ms": 1500,
            "heartbeat_interval_ms": 150,
            **config,
        },
    }


def start_children(
    n, broker, tmp_path: Path, closing, group, topics, prefix="c", config=None, **spec
):
    kids = []
    for i in range(n):
        base = child_spec(broker, group, topics, client_id=f"{prefix}{i}", **(config or {}))
        base.update(spec)
        kid = ChildConsumer(f"{prefix}{i}", base, tmp_path)
        closing.append(kid)
        kids.append(kid)
    return kids


def settled(kids, partitions: set[tuple[str, int]]):
    """Every child reported an assignment for the same, newest generation, and together
    they own each partition once. Returns that generation."""
    gens = {k.generation() for k in kids}
    if len(gens) != 1 or min(gens) <= 0:
        return None
    owned = [tp for k in kids for tp in k.assignment()]
    if len(owned) != len(set(owned)) or set(owned) != partitions:
        return None
    return gens.pop()


# -- the source document's mapping cases -----------------------------------------------------


def test_one_partition_four_consumers_one_reads_three_stand_by_and_one_takes_over(
    broker, admin, tmp_path, closing
) -> None:
    admin.create_topic("map-a", partitions=1)
    session_ms = 1500
    # The reader commits up to offset 12 only, then reads on: records 12..29 are read but
    # not committed when it dies.
    kids = start_children(
        4,
        broker,
        tmp_path,
        closing,
        "map-a",
        ["map-a"],
        commit_upto=12,
    )
    tp = ("map-a", 0)
    wait_until("one generation with one owner of map-a/0", lambda: settled(kids, {tp}))
    readers = [k for k in kids if k.assignment() == {tp}]
    assert len(readers) == 1
    reader = readers[0]
    standbys = [k for k in kids if k is not reader]
    assert all(k.assignment() == set() for k in standbys), "three members stand by idle"
    assert all(k.of("assigned") for k in standbys), "standbys are members with nothing"
    produce(broker.bootstrap, "map-a", 30, partitions=1)
    wait_until("the reader to read all 30", lambda: 29 in reader.offsets(tp))
    wait_until(
        "the reader to commit offset 12",
        lambda: any(o[2] == 12 for c in reader.of("committed") for o in c["offsets"]),
    )
    assert all(not k.of("records") for k in standbys), "a standby read records"
    assert admin.list_group_offsets("map-a") == {TP("map-a", 0): 12}

    reader.kill()
    took_over = wait_until(
        "a standby to read map-a/0",
        lambda: [k for k in standbys if k.of("records")],
        timeout_s=session_ms / 1000 + 15,
    )
    assert len(took_over) == 1, "exactly one standby takes over"
    heir = took_over[0]
    first = heir.of("records")[0]
    delay = first["t"] - reader.ended_at
    # The session runs out, the coordinator rebalances, the heir's next poll fetches.
    assert delay < session_ms / 1000 + 3.0, f"takeover took {delay:.1f} s"
    wait_until("the heir to read up to 29", lambda: 29 in heir.offsets(tp))
    assert heir.offsets(tp) == list(range(12, 30)), (
        "at-least-once: every record after the last commit again, none before it"
    )
    assert all(not k.of("records") for k in standbys if k is not heir)


def test_four_partitions_two_consumers_two_each(broker, admin, closing) -> None:
    admin.create_topic("map-b", partitions=4)
    a = consumer(broker.bootstrap, "map-b", client_id="b-a")
    b = consumer(broker.bootstrap, "map-b", client_id="b-b")
    closing += [a, b]
    a.subscribe(["map-b"])
    b.subscribe(["map-b"])
    poll_until(
        "two partitions each",
        [a, b],
        lambda: len(a.assignment()) == 2 and len(b.assignment()) == 2,
    )
    assert a.assignment() | b.assignment() == {TP("map-b", p) for p in range(4)}
    assert a.assignment() == {TP("map-b", 0), TP("map-b", 1)}, "range: b-a sorts first"
    produce(broker.bootstrap, "map-b", 40, partitions=4)
    got: dict = {}
    poll_until(
        "all 40 records",
        [a, b],
        lambda: sum(len(v) for v in got.values()) >= 40,
        sink=got,
    )
    for c in (a, b):
        assert {TP(r.topic, r.partition) for r in got[c]} == c.assignment()
    values = Counter(r.value for rs in got.values() for r in rs)
    assert values == Counter(str(n).encode() for n in range(40)), "each record exactly once"


def test_four_partitions_two_groups_each_get_every_record(broker, admin, closing) -> None:
    admin.create_topic("map-c", partitions=4)
    groups = {
        "billing": [consumer(broker.bootstrap, "billing", client_id=f"bill{i}") for i in (0, 1)],
        "audit": [consumer(broker.bootstrap, "audit", client_id=f"audit{i}") for i in (0, 1)],
    }
    everyone = [c for cs in groups.values() for c in cs]
    closing += everyone
    for c in everyone:
        c.subscribe(["map-c"])
    poll_until(
        "both groups to split the partitions",
        everyone,
        lambda: all(len(c.assignment()) == 2 for c in everyone),
    )
    produce(broker.bootstrap, "map-c", 40, partitions=4)
    got: dict = {}
    poll_until(
        "every record in both groups",
        everyone,
        lambda: sum(len(v) for v in got.values()) >= 80,
        sink=got,
    )
    every = Counter(str(n).encode() for n in range(40))
    for cs in groups.values():
        assert Counter(r.value for c in cs for r in got[c]) == every, "once in each group"
    # Independent committed offsets: billing commits everything, audit half of p0.
    for c in groups["billing"]:
        c.commit()
    owner = next(c for c in groups["audit"] if TP("map-c", 0) in c.assignment())
    owner.commit({TP("map-c", 0): 5})
    assert admin.list_group_offsets("billing") == {TP("map-c", p): 10 for p in range(4)}
    assert admin.list_group_offsets("audit") == {TP("map-c", 0): 5}
    # a third group starts from scratch: nothing another group committed applies to it
    fresh = consumer(broker.bootstrap, "reports", client_id="rep")
    closing.append(fresh)
    fresh.subscribe(["map-c"])
    seen: dict = {}
    poll_until(
        "a new group to read all 40", [fresh], lambda: len(seen.get(fresh, [])) >= 40, sink=seen
    )
    assert sorted(r.offset for r in seen[fresh] if r.partition == 0) == list(range(10))


# -- one owner per partition at any time -----------------------------------------------------


def reading(kids) -> bool:
    """Every child that owns partitions has read records since its last assignment."""
    for k in kids:
        assigned = k.of("assigned")
        if k.assignment() and not any(e["t"] > assigned[-1]["t"] for e in k.of("records")):
            return False
    return True


def ownership_windows(kid: ChildConsumer, end: float) -> dict[tuple, list[list[float]]]:
    """Per partition, the [assigned, revoked] intervals from a child's callbacks; a window
    still open ends when the process was killed or closed (or at ``end``)."""
    windows: dict[tuple, list[list[float]]] = {}
    for e in kid.events:
        for tp in map(tuple, e.get("tps", [])):
            if e["ev"] == "assigned":
                windows.setdefault(tp, []).append([e["t"], None])
            elif e["ev"] in ("revoked", "lost"):
                open_ = [w for w in windows.get(tp, []) if w[1] is None]
                assert open_, f"{kid.name} revoked {tp} it did not own"
                open_[-1][1] = e["t"]
    for spans in windows.values():
        for w in spans:
            if w[1] is None:
                w[1] = kid.ended_at if kid.ended_at is not None else end
    return windows


def test_no_partition_is_read_by_two_members_at_once_through_join_leave_and_kill(
    broker, admin, tmp_path, closing
) -> None:
    topic = "owners"
    admin.create_topic(topic, partitions=4)
    everything = {(topic, p) for p in range(4)}
    stop = threading.Event()
    produced = [0]

    def keep_producing() -> None:
        producer = kvlog.Producer(bootstrap_servers=broker.bootstrap, linger_ms=2)
        try:
            while not stop.is_set() and produced[0] < 100_000:
                producer.send(topic, value=str(produced[0]).encode(), partition=produced[0] % 4)
                produced[0] += 1
                if produced[0] % 20 == 0:
                    producer.flush(timeout=30)
                    time.sleep(0.02)
            producer.flush(timeout=30)
        finally:
            producer.close()

    feeder = threading.Thread(target=keep_producing, daemon=True)
    feeder.start()
    try:
        kids = start_children(2, broker, tmp_path, closing, topic, [topic], prefix="o")
        wait_until("o0 and o1 to share the topic", lambda: settled(kids, everything))
        wait_until("records flowing", lambda: reading(kids))
        joiner = start_children(1, broker, tmp_path, closing, topic, [topic], prefix="p")[0]
        live = [*kids, joiner]
        wait_until("a rebalance on join", lambda: settled(live, everything))
        wait_until("records flowing", lambda: reading(live))
        assert all(k.assignment() for k in live)
        kids[0].close()
        live = [kids[1], joiner]
        wait_until("a rebalance on leave", lambda: settled(live, everything))
        wait_until("records flowing", lambda: reading(live))
        kids[1].kill()
        live = [joiner]
        wait_until("a rebalance after SIGKILL", lambda: settled(live, everything))
        wait_until("records flowing", lambda: reading(live))
        late = start_children(1, broker, tmp_path, closing, topic, [topic], prefix="q")[0]
        live = [joiner, late]
        wait_until("a rebalance on the last join", lambda: settled(live, everything))
        wait_until("records flowing", lambda: reading(live))
    finally:
        stop.set()
        feeder.join(30)
    total = produced[0]
    everyone = [*kids, joiner, late]

    def read_everything() -> bool:
        return all(
            {o for k in everyone for o in k.offsets((topic, p))}
            >= set(range(len(range(p, total, 4))))
            for p in range(4)
        )

    wait_until(f"all {total} records read", read_everything, timeout_s=30)
    end = time.monotonic()
    windows = {k.name: ownership_windows(k, end) for k in everyone}
    # each record batch came while its reader owned the partition
    for k in everyone:
        for e in k.of("records"):
            spans = windows[k.name].get(tuple(e["tp"]), [])
            assert any(a <= e["t"] <= b for a, b in spans), (
                f"{k.name} read {e['tp']} at {e['t']} outside its ownership {spans}"
            )
    # no two members' ownership of a partition overlaps
    for tp in everything:
        spans = sorted((a, b, name) for name, w in windows.items() for a, b in w.get(tp, []))
        for (_, b1, n1), (a2, _, n2) in itertools.pairwise(spans):
            assert b1 <= a2, f"{tp}: {n1} owned it until {b1}, {n2} from {a2}"
    assert {k.name for k in everyone if k.of("records")} >= {"p0", "q0"}


# -- listener callbacks --------------------------------------------------------------------


def test_rebalance_listener_sees_revoked_then_assigned(broker, admin, closing) -> None:
    admin.create_topic("listen", partitions=4)
    ra, rb = Recorder(), Recorder()
    a = consumer(broker.bootstrap, "listen", client_id="l-a")
    b = consumer(broker.bootstrap, "listen", client_id="l-b")
    closing += [a, b]
    a.subscribe(["listen"], listener=ra)
    poll_until("a to own everything", [a], lambda: len(a.assignment()) == 4)
    assert ra.calls == [("assigned", {TP("listen", p) for p in range(4)}, ra.calls[0][2])]
    b.subscribe(["listen"], listener=rb)
    poll_until("2 each", [a, b], lambda: len(a.assignment()) == len(b.assignment()) == 2)
    assert ra.kinds() == ["assigned", "revoked", "assigned"]
    assert ra.calls[1][1] == {TP("listen", p) for p in range(4)}, "eager: revoke everything"
    assert ra.calls[2][1] == a.assignment()
    assert rb.kinds() == ["assigned"] and rb.calls[0][1] == b.assignment()
    b.close()
    assert rb.kinds() == ["assigned", "revoked"], "close revokes"
    poll_until("a to own everything again", [a], lambda: len(a.assignment()) == 4)
    assert ra.kinds() == ["assigned", "revoked", "assigned", "revoked", "assigned"]


def test_partitions_are_lost_when_the_session_expires(broker, admin, tmp_path, closing) -> None:
    """A consumer process frozen (SIGSTOP) past session.timeout.ms is dropped from the
    group; when it runs again its listener hears on_partitions_lost, then it rejoins."""
    admin.create_topic("lost", partitions=2)
    kid = start_children(1, broker, tmp_path, closing, "lost", ["lost"], prefix="z")[0]
    wait_until("z0 to own both partitions", lambda: len(kid.assignment()) == 2)
    other = consumer(broker.bootstrap, "lost", client_id="zz")
    closing.append(other)
    other.subscribe(["lost"])
    poll_until("one partition each", [other], lambda: len(other.assignment()) == 1)
    kid.proc.send_signal(signal.SIGSTOP)
    try:
        # other keeps polling: after z0's 1.5 s session it gets both partitions
        poll_until(
            "z0's session to expire", [other], lambda: len(other.assignment()) == 2, timeout_s=10
        )
    finally:
        kid.proc.send_signal(signal.SIGCONT)
    wait_until("z0 to report the loss", lambda: kid.of("lost"))
    lost = kid.of("lost")[0]
    before = [e for e in kid.events if e["ev"] in ("assigned", "revoked") and e["t"] < lost["t"]]
    assert before[-1]["ev"] == "assigned", "lost, not revoked: it could not commit first"
    assert lost["tps"] == before[-1]["tps"] and len(lost["tps"]) == 1
    poll_until("z0 to rejoin", [other], lambda: len(other.assignment()) == 1, timeout_s=15)


# -- commits -------------------------------------------------------------------------------


def test_auto_commit_commits_only_what_poll_returned_and_on_close(broker, admin, closing) -> None:
    admin.create_topic("auto", partitions=1)
    produce(broker.bootstrap, "auto", 50, partitions=1)
    tp = TP("auto", 0)
    c = consumer(
        broker.bootstrap,
        "auto",
        enable_auto_commit=True,
        auto_commit_interval_ms=100,
        max_poll_records=7,
    )
    probe = consumer(broker.bootstrap, "auto")  # not subscribed: only reads commits
    closing += [c, probe]
    c.subscribe(["auto"])
    returned = 0
    for _ in range(4):
        records = poll_until("a batch", [], lambda: c.poll(timeout_ms=100).get(tp))
        assert records[0].offset == returned
        returned = records[-1].offset + 1
        # The fetcher has prefetched far beyond this batch; auto commit must not commit it.
        c.pause(tp)
        poll_until(
            f"auto commit of {returned}",
            [c],
            lambda upto=returned: probe.committed(tp) == upto,
        )
        for _ in range(3):
            c.poll(timeout_ms=120)  # more auto-commit intervals pass
            assert probe.committed(tp) == returned, "committed records poll() never returned"
        c.resume(tp)
    records = poll_until("a last batch", [], lambda: c.poll(timeout_ms=100).get(tp))
    returned = records[-1].offset + 1
    c.close()  # commits what poll() returned, at once
    assert probe.committed(tp) == returned


def test_commit_commit_async_and_committed(broker, admin, closing) -> None:
    admin.create_topic("manual", partitions=1)
    produce(broker.bootstrap, "manual", 30, partitions=1)
    tp = TP("manual", 0)
    c = consumer(broker.bootstrap, "manual", max_poll_records=10)
    closing.append(c)
    c.subscribe(["manual"])
    assert c.committed(tp) is None
    records = poll_until("10 records", [], lambda: c.poll(timeout_ms=100).get(tp))
    assert [r.offset for r in records] == list(range(10))
    c.commit()
    assert c.committed(tp) == 10, "the committed offset is the next offset to read"
    c.commit({tp: kvlog.OffsetAndMetadata(7, "halfway")})
    assert c.committed(tp) == 7
    c.poll(timeout_ms=100)
    done: list = []
    c.commit_async(callback=lambda offsets, exc: done.append((offsets, exc)))
    poll_until("the async commit's callback", [], lambda: done)
    offsets, exc = done[0]
    assert exc is None
    assert offsets == {tp: c.position(tp)}
    assert c.committed(tp) == c.position(tp) == 20
    c.commit({tp: 13})
    c.close(autocommit=False)
    # the next member of the group starts at the committed offset
    d = consumer(broker.bootstrap, "manual")
    closing.append(d)
    d.subscribe(["manual"])
    records = poll_until("records", [], lambda: d.poll(timeout_ms=100).get(tp))
    assert records[0].offset == 13


def test_commit_after_max_poll_interval_raises_commit_failed_naming_cause_and_setting(
    broker, admin, closing
) -> None:
    admin.create_topic("late", partitions=1)
    produce(broker.bootstrap, "late", 5, partitions=1)
    tp = TP("late", 0)
    c = consumer(broker.bootstrap, "late", max_poll_interval_ms=800, heartbeat_interval_ms=100)
    closing.append(c)
    c.subscribe(["late"])
    poll_until("records", [], lambda: c.poll(timeout_ms=100).get(tp))
    # Not calling poll() is what this test is about: wait until the watchdog gives up.
    wait_until("the member to leave", lambda: c._group.generation == -1, timeout_s=10)
    with pytest.raises(CommitFailedError) as info:
        c.commit({tp: 3})
    message = str(info.value)
    assert "poll() was not called" in message, message
    assert "max.poll.interval.ms" in message, message
    assert c.committed(tp) is None


def test_max_poll_interval_leaves_raises_and_rejoins(broker, admin, closing) -> None:
    admin.create_topic("slow", partitions=4)
    ra = Recorder()
    a = consumer(
        broker.bootstrap,
        "slow",
        client_id="s-a",
        max_poll_interval_ms=1000,
        heartbeat_interval_ms=100,
    )
    b = consumer(broker.bootstrap, "slow", client_id="s-b")
    closing += [a, b]
    a.subscribe(["slow"], listener=ra)
    b.subscribe(["slow"])
    poll_until("2 each", [a, b], lambda: len(a.assignment()) == len(b.assignment()) == 2)
    # a stops polling; b keeps going and gets a's partitions
    poll_until("b to take over", [b], lambda: len(b.assignment()) == 4, timeout_s=15)
    with pytest.raises(MaxPollIntervalExceededError) as info:
        a.poll(timeout_ms=0)
    message = str(info.value)
    assert "max.poll.interval.ms=1000" in message, message
    assert "rejoins on the next poll()" in message, message
    assert ra.kinds()[-1] == "lost"
    assert a.assignment() == set()
    poll_until("a to rejoin", [a, b], lambda: len(a.assignment()) == len(b.assignment()) == 2)


# -- subscriptions and assignors -----------------------------------------------------------


def test_subscribe_pattern_picks_up_matching_topics(broker, admin, closing) -> None:
    admin.create_topic("pat-1", partitions=2)
    admin.create_topic("other-pat", partitions=1)
    c = consumer(broker.bootstrap, "pattern")
    closing.append(c)
    c.subscribe(pattern=r"pat-\d+")
    poll_until("pat-1", [c], lambda: c.assignment() == {TP("pat-1", 0), TP("pat-1", 1)})
    admin.create_topic("pat-2", partitions=2)
    poll_until("pat-2 as well", [c], lambda: len(c.assignment()) == 4, timeout_s=20)
    assert {tp.topic for tp in c.assignment()} == {"pat-1", "pat-2"}
    produce(broker.bootstrap, "pat-2", 4, partitions=2)
    got: dict = {}
    poll_until("pat-2's records", [c], lambda: len(got.get(c, [])) >= 4, sink=got)
    assert {r.topic for r in got[c]} == {"pat-2"}


def test_cooperative_sticky_keeps_partitions_through_a_rebalance(broker, admin, closing) -> None:
    admin.create_topic("coop", partitions=4)
    ra, rb = Recorder(), Recorder()
    settings = {"partition_assignment_strategy": ["cooperative-sticky"]}
    a = consumer(broker.bootstrap, "coop", client_id="co-a", **settings)
    b = consumer(broker.bootstrap, "coop", client_id="co-b", **settings)
    closing += [a, b]
    a.subscribe(["coop"], listener=ra)
    poll_until("a to own everything", [a], lambda: len(a.assignment()) == 4)
    before = a.assignment()
    b.subscribe(["coop"], listener=rb)
    sizes = []

    def balanced() -> bool:
        sizes.append(len(a.assignment()))
        return len(a.assignment()) == len(b.assignment()) == 2

    poll_until("2 each", [a, b], balanced)
    assert min(sizes) == 2, f"a was left with {min(sizes)} partitions during the rebalance"
    kept = a.assignment()
    assert kept < before
    revoked = [tps for kind, tps, _ in ra.calls if kind == "revoked"]
    assert revoked == [before - kept], "only the partitions that move are revoked"
    assert [tps for kind, tps, _ in rb.calls if kind == "assigned"] == [before - kept]
    assert "lost" not in ra.kinds()


def test_sticky_keeps_what_it_can_when_a_member_joins(broker, admin, closing) -> None:
    """Eager sticky: members revoke everything before rejoining, but the assignor still
    learns what each owned, so only one of four partitions moves to a third member."""
    admin.create_topic("stick", partitions=4)
    settings = {"partition_assignment_strategy": ["sticky"]}
    a = consumer(broker.bootstrap, "stick", client_id="st-a", **settings)
    b = consumer(broker.bootstrap, "stick", client_id="st-b", **settings)
    c = consumer(broker.bootstrap, "stick", client_id="st-c", **settings)
    closing += [a, b, c]
    a.subscribe(["stick"])
    b.subscribe(["stick"])
    poll_until("2 each", [a, b], lambda: len(a.assignment()) == len(b.assignment()) == 2)
    before = {"a": a.assignment(), "b": b.assignment()}
    c.subscribe(["stick"])
    poll_until(
        "three members",
        [a, b, c],
        lambda: sorted(len(x.assignment()) for x in (a, b, c)) == [1, 1, 2],
    )
    kept = len(a.assignment() & before["a"]) + len(b.assignment() & before["b"])
    assert kept == 3, f"{4 - kept} partitions moved, 1 had to: {before} -> " + repr(
        (a.assignment(), b.assignment(), c.assignment())
    )


def test_static_member_restart_keeps_partitions_without_a_rebalance(broker, admin, closing) -> None:
    admin.create_topic("static", partitions=4)
    ra = Recorder()
    settings = {"session_timeout_ms": 6000}
    a = consumer(broker.bootstrap, "static", client_id="k-a", group_instance_id="k-a", **settings)
    b = consumer(broker.bootstrap, "static", client_id="k-b", group_instance_id="k-b", **settings)
    closing += [a, b]
    a.subscribe(["static"], listener=ra)
    b.subscribe(["static"])
    poll_until("2 each", [a, b], lambda: len(a.assignment()) == len(b.assignment()) == 2)
    # one more rebalance, so each member's subscription carries a generation
    extra = consumer(broker.bootstrap, "static", client_id="k-x")
    extra.subscribe(["static"])
    poll_until("three members", [a, b, extra], lambda: len(extra.assignment()) > 0)
    extra.close()
    poll_until("2 each again", [a, b], lambda: len(a.assignment()) == len(b.assignment()) == 2)
    with kvlog.Admin(bootstrap_servers=broker.bootstrap) as adm:
        generation = adm.describe_groups(["static"])[0]["generation"]
    b_parts = b.assignment()
    calls_before = len(ra.calls)
    b.close()  # a static member does not leave the group on close
    b2 = consumer(broker.bootstrap, "static", client_id="k-b", group_instance_id="k-b", **settings)
    closing.append(b2)
    rb2 = Recorder()
    b2.subscribe(["static"], listener=rb2)
    poll_until("the restarted member's partitions", [a, b2], lambda: b2.assignment())
    assert b2.assignment() == b_parts
    described = admin.describe_groups(["static"])[0]
    assert described["generation"] == generation, "no rebalance"
    assert described["state"] == "Stable"
    for _ in range(5):
        a.poll(timeout_ms=50)
    assert ra.calls[calls_before:] == [], "the other member saw no rebalance"


# -- the coordinator dies ------------------------------------------------------------------


def test_group_and_offsets_survive_a_coordinator_sigkill(tmp_path, closing) -> None:
    with (
        kvlog.Broker(
            data_dir=tmp_path / "data",
            listen="tcp://127.0.0.1:0",
            console_listen="none",
            config=BROKER_CONFIG,
        ) as broker,
        kvlog.Admin(bootstrap_servers=broker.bootstrap) as admin,
    ):
        admin.create_topic("survive", partitions=4)
        produce(broker.bootstrap, "survive", 40, partitions=4)
        settings = {"session_timeout_ms": 6000, "request_timeout_ms": 3000}
        a = consumer(broker.bootstrap, "survive", client_id="v-a", **settings)
        b = consumer(broker.bootstrap, "survive", client_id="v-b", **settings)
        closing += [a, b]
        a.subscribe(["survive"])
        b.subscribe(["survive"])
        poll_until(
            "all 40 read, 2 partitions each",
            [a, b],
            lambda: (
                len(a.assignment()) == len(b.assignment()) == 2
                and all(c.position(tp) == 10 for c in (a, b) for tp in c.assignment())
            ),
        )
        a.commit()
        b.commit()
        before = admin.describe_groups(["survive"])[0]
        assert admin.list_group_offsets("survive") == {TP("survive", p): 10 for p in range(4)}
        coordinator = next(c for c in broker.children if c.role == "coordinator")
        old_pid = coordinator.pid
        os.kill(old_pid, signal.SIGKILL)
        wait_until(
            "the supervisor to restart the coordinator",
            lambda: coordinator.pid != old_pid and coordinator.endpoint,
        )
        produce(broker.bootstrap, "survive", 40, partitions=4, start=40)
        errors: list = []
        got = {}

        def consumed_and_committed() -> bool:
            for c in (a, b):
                try:
                    c.commit()
                except kvlog.KvlogError as exc:
                    errors.append(exc)
            offsets = admin.list_group_offsets("survive")
            return offsets == {TP("survive", p): 20 for p in range(4)}

        poll_until(
            "the new records consumed and committed",
            [a, b],
            consumed_and_committed,
            timeout_s=40,
            sink=got,
        )
        values = {r.value for rs in got.values() for r in rs}
        assert values >= {str(n).encode() for n in range(40, 80)}
        after = admin.describe_groups(["survive"])[0]
        assert after["state"] == "Stable"
        assert after["generation"] == before["generation"], "the group carried on"
        assert sorted(m["member_id"] for m in after["members"]) == sorted(
            m["member_id"] for m in before["members"]
        )
        assert a.assignment() | b.assignment() == {TP("survive", p) for p in range(4)}
        a.close(autocommit=False)
        b.close(autocommit=False)


def test_close_during_a_rebalance_leaves_the_group_at_once(broker, admin, closing) -> None:
    """A consumer closed while it waits on a rebalance still sends LeaveGroup: the others
    must not carry its partitions (unread) until its session runs out."""
    admin.create_topic("bye", partitions=4)
    settings = {"session_timeout_ms": 30_000}
    a = consumer(broker.bootstrap, "bye", client_id="y-a", **settings)
    b = consumer(broker.bootstrap, "bye", client_id="y-b", **settings)
    closing += [a, b]
    a.subscribe(["bye"])
    b.subscribe(["bye"])
    poll_until("2 each", [a, b], lambda: len(a.assignment()) == len(b.assignment()) == 2)
    c = consumer(broker.bootstrap, "bye", client_id="y-c", **settings)
    closing.append(c)
    c.subscribe(["bye"])
    # c's JoinGroup starts a rebalance: polled without waiting, until its second JoinGroup
    # (KIP-394: the first only hands out its member id) is in.
    wait_until(
        "b to hear of the rebalance",
        lambda: c.poll(timeout_ms=0) == {} and b._group.need_rejoin,
        timeout_s=10,
    )
    b.poll(timeout_ms=0)  # b revokes and rejoins, then closes before the rebalance ends
    b.close()
    poll_until(
        "a and c to share all four partitions",
        [a, c],
        lambda: len(a.assignment() | c.assignment()) == 4,
        timeout_s=10,
    )


def test_cooperative_member_dropped_mid_rebalance_stops_reading_its_partitions(
    broker, admin, tmp_path, closing
) -> None:
    """A cooperative member keeps its partitions while it rejoins. If the group goes on
    without it (here: frozen between JoinGroup and SyncGroup past its session), the
    coordinator answers its SyncGroup with UNKNOWN_MEMBER_ID: the partitions are lost,
    since others own them now, and it must stop reading them at once."""
    topic = "coop-zombie"
    admin.create_topic(topic, partitions=4)
    coop = {"partition_assignment_strategy": ["cooperative-sticky"]}
    # zc0's session must not run out before the test freezes it (a loaded machine can
    # leave its heartbeat thread unscheduled for a second or more); it runs out frozen.
    frozen_session = {**coop, "session_timeout_ms": 3000, "heartbeat_interval_ms": 300}
    zombie = start_children(1, broker, tmp_path, closing, topic, [topic], "zc", frozen_session)[0]
    wait_until("zc0 to own everything", lambda: len(zombie.assignment()) == 4)
    b = consumer(broker.bootstrap, topic, client_id="zd", **coop)
    closing.append(b)
    b.subscribe([topic])
    poll_until(
        "2 each",
        [b],
        lambda: len(b.assignment()) == 2 and len(zombie.assignment()) == 2,
        timeout_s=20,
    )
    produce(broker.bootstrap, topic, 40, partitions=4)
    mine = zombie.assignment()
    # Everything there is in its partitions read, so nothing is left in its buffers: what
    # it returns after it is thawed it fetched after.
    wait_until(
        "zc0 to read its partitions whole", lambda: all(9 in zombie.offsets(tp) for tp in mine)
    )
    c = consumer(broker.bootstrap, topic, client_id="ze", **coop)
    closing.append(c)
    c.subscribe([topic])
    # A rebalance begins (c polled without waiting until its second JoinGroup, KIP-394's,
    # is in); b does not rejoin yet, so it cannot end. zc0 rejoins as the member it was
    # (its generation kept), not as a newcomer after a lost session.
    joining = len(zombie.of("state"))
    wait_until(
        "zc0 to rejoin",
        lambda: (
            c.poll(timeout_ms=0) == {}
            and [
                e
                for e in zombie.of("state")[joining - 1 :]
                if e["state"] == "joining" and e["gen"] >= 0
            ]
        ),
    )
    time.sleep(0.3)  # its JoinGroup leaves the process (nothing to observe it by)
    zombie.proc.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        # b and c complete the rebalance (zc0's parked join counts it in), zc0 never
        # syncs, its session runs out, and b and c split everything
        poll_until(
            "b and c to own all four",
            [b, c],
            lambda: len(b.assignment() | c.assignment()) == 4,
            timeout_s=20,
        )
    finally:
        zombie.proc.send_signal(signal.SIGCONT)
    wait_until("zc0 to notice", lambda: zombie.of("lost") or zombie.of("error"), timeout_s=10)
    given = {(t.topic, t.partition) for t in b.assignment() | c.assignment()}
    # New records only once it was told (until the coordinator answers, a cooperative
    # member reads what it owned, as it does through every rebalance). A member that
    # went on fetching its old partitions would read them at once; zc0 comes back and is
    # given partitions again only after a whole rebalance with b and c, which takes longer.
    # (Its state is no sign of being back: joining before and after, the unjoined moment
    # between may fall inside one poll().)
    produce(broker.bootstrap, topic, 40, partitions=4, start=40)
    poll_until(
        "zc0 to be back and given partitions again",
        [b, c],
        lambda: [a for a in zombie.of("assigned") if a["t"] > stopped_at],
        timeout_s=30,
    )
    back = [a for a in zombie.of("assigned") if a["t"] > stopped_at]

    def given_back(e: dict) -> bool:
        return any(a["t"] < e["t"] and e["tp"] in a["tps"] for a in back)

    late = [
        e
        for e in zombie.of("records")
        if e["t"] > stopped_at and tuple(e["tp"]) in given and not given_back(e)
    ]
    assert not late, f"zc0 read partitions the group gave to others: {late[:3]}"
    assert zombie.of("lost"), "its partitions were lost, and its listener must hear so"
