"""Fault tests (issue 5): producers and a consumer group under SIGKILLs and a full disk.

A seeded nemesis SIGKILLs nodes (leaders and followers), the broker and the coordinator
of a 3-node cluster (replication factor 3, min.insync.replicas=2) under idempotent
acks=all producers and a consumer group; one variant also fills a node's log dir (an
RLIMIT_FSIZE cap; as root, chmod cannot make it read-only). Then, with every process
back: no acknowledged record lost, none stored twice, none out of order, every replica
identical below the high watermark, every acknowledged record seen by the consumers.

The short run is part of the normal suite; the long ones (>= 30 kills) run with
``KVLOG_LONG_TESTS=1``. The seed is printed; ``KVLOG_FAULT_SEED=<seed>`` replays it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nemesis import seed_from_env
from scenario import Outcome, Scenario, run_scenario


def _run(data_dir: Path, scenario: Scenario) -> Outcome:
    outcome = run_scenario(data_dir, scenario)
    print(outcome.report())
    print("figures:", json.dumps(outcome.figures()))
    assert outcome.ok, outcome.report()
    return outcome


@pytest.mark.timeout(240)
def test_kills_and_a_full_disk(tmp_path: Path) -> None:
    outcome = _run(
        tmp_path,
        Scenario(seed=seed_from_env(), kills=8, disk_after=4, disk_hold_s=3.0, disk_kills=1),
    )
    assert len(outcome.kills) >= 8
    assert outcome.episode is not None and outcome.episode.acks_during > 0


@pytest.mark.long
@pytest.mark.timeout(2400)
def test_kills_long(tmp_path: Path) -> None:
    outcome = _run(tmp_path, Scenario(seed=seed_from_env(), kills=40, producers=3, rate=400.0))
    assert len(outcome.kills) >= 30


@pytest.mark.long
@pytest.mark.timeout(1800)
def test_full_disk_long(tmp_path: Path) -> None:
    outcome = _run(
        tmp_path,
        Scenario(seed=seed_from_env(), kills=16, disk_after=8, disk_hold_s=15.0, disk_kills=3),
    )
    assert outcome.episode is not None and outcome.episode.acks_during > 0
