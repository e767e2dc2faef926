#!/usr/bin/env python3
"""The broker setting ``commit.pipelined`` off against on: ``kvlog perf e2e --rate 2000
--seconds 10`` on a fresh embedded broker for each, alternating which goes first each round.

Usage: tools/bench/pipelined_e2e.py [ROUNDS]   (default 3)

Prints each run's latency percentiles and the load, then every run's JSON as one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import kvlog


def e2e_run(pipelined: bool) -> dict[str, Any] | None:
    with (
        tempfile.TemporaryDirectory() as data_dir,
        kvlog.Broker(data_dir, "tcp://127.0.0.1:0", config={"commit.pipelined": pipelined}) as b,
    ):
        command = ["kvlog", "perf", "e2e", "--bootstrap-server", b.bootstrap]
        command += ["--rate", "2000", "--seconds", "10", "--json"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        print("the run failed:", out.stdout[-500:], out.stderr[-1500:], file=sys.stderr)
        return None


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    runs: dict[str, list[dict[str, Any]]] = {"default": [], "pipelined": []}
    for r in range(rounds):
        for pipelined in (False, True) if r % 2 == 0 else (True, False):
            result = e2e_run(pipelined)
            if result is None:
                continue
            name = "pipelined" if pipelined else "default"
            runs[name].append(result)
            figures = {k: v for k, v in result.items() if "p50" in k or "p99" in k}
            print(r, name, figures, f"load {os.getloadavg()[0]:.2f}", flush=True)
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
