"""A mirror under the supervisor (``kvlog serve --mirror-config``) exposes its lag on the
broker's metrics endpoint: records and age of the oldest unforwarded record per source
partition, the target's reachability, records forwarded (docs/METRICS.md, "Mirrors")."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from mirror_util import FixedBroker, end_offsets, wait_until
from prometheus_client.parser import text_string_to_metric_families

import kvlog
from kvlog.types import TopicPartition

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sum of ``name``'s samples whose labels include ``labels``; None if none."""
    found = [
        v
        for (n, have), v in samples.items()
        if n == name and all((k, want) in have for k, want in labels.items())
    ]
    return sum(found) if found else None


def test_the_mirror_lag_is_in_the_brokers_metrics(tmp_path: Path) -> None:
    target = FixedBroker(tmp_path / "target").start()
    config = tmp_path / "mirror.toml"
    config.write_text(f'[[mirror]]\nname = "central"\nto = "{target.kafka}"\ntopics = "fleet"\n')
    from kvlog.tools.serve import load_mirror_config

    tps = [TopicPartition("fleet", p) for p in range(2)]
    try:
        with kvlog.Broker(
            tmp_path / "data",
            "tcp://127.0.0.1:0",
            metrics_listen="127.0.0.1:0",
            mirrors=load_mirror_config(config),
        ) as broker:
            url = broker.metrics_url
            assert url
            admin = kvlog.Admin(bootstrap_servers=broker.bootstrap)
            admin.create_topic("fleet", partitions=2)
            admin.close()
            with kvlog.Producer(bootstrap_servers=broker.bootstrap) as producer:
                producer.send_batch("fleet", [b"a%d" % i for i in range(100)], partition=0).get(30)
            wait_until(
                lambda: end_offsets(target.bootstrap, tps) == {tps[0]: 100, tps[1]: 0},
                60,
                "forwarding",
            )

            def caught_up(s: Samples) -> bool:
                return (
                    value(s, "kvlog_mirror_forwarded_records_total", mirror="central") == 100
                    and value(
                        s,
                        "kvlog_mirror_lag_records",
                        mirror="central",
                        topic="fleet",
                        partition="0",
                    )
                    == 0
                    and value(
                        s,
                        "kvlog_mirror_lag_records",
                        mirror="central",
                        topic="fleet",
                        partition="1",
                    )
                    == 0
                    and value(s, "kvlog_mirror_oldest_unforwarded_age_seconds", mirror="central")
                    == 0
                    and value(s, "kvlog_mirror_target_up", mirror="central") == 1
                )

            samples = wait_until(lambda: (s := scrape(url)) and caught_up(s) and s, 30, "caught up")
            assert value(samples, "kvlog_mirror_gaps_total", mirror="central") in (None, 0)

            target.stop()  # the link is cut: the backlog shows as lag and age
            with kvlog.Producer(bootstrap_servers=broker.bootstrap) as producer:
                producer.send_batch("fleet", [b"b%d" % i for i in range(50)], partition=1).get(30)

            def waiting(s: Samples) -> bool:
                return (
                    value(s, "kvlog_mirror_target_up", mirror="central") == 0
                    and value(s, "kvlog_mirror_lag_records", mirror="central", partition="1") == 50
                    and (
                        value(s, "kvlog_mirror_oldest_unforwarded_age_seconds", partition="1") or 0
                    )
                    > 0
                )

            wait_until(lambda: (s := scrape(url)) and waiting(s) and s, 60, "the lag while down")

            target.start()

            def forwarded(s: Samples) -> bool:
                return (
                    value(s, "kvlog_mirror_forwarded_records_total", mirror="central") == 150
                    and value(s, "kvlog_mirror_lag_records", mirror="central") == 0
                    and value(s, "kvlog_mirror_target_up", mirror="central") == 1
                )

            wait_until(lambda: (s := scrape(url)) and forwarded(s) and s, 90, "the backlog sent")
            assert end_offsets(target.bootstrap, tps) == {tps[0]: 100, tps[1]: 50}
    finally:
        target.stop()
