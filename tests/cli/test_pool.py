"""``kvlog consume --group G --workers N --handler module:function``: the consumer pool."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from clitest_util import Serve, cli, kvlog_cmd, unique, wait_until

HANDLER = """
from pathlib import Path

OUT = Path({out!r})


def handle(record):
    if record.value == b"poison":
        raise ValueError("cannot handle poison")
    with OUT.open("a") as f:
        f.write(record.value.decode() + "\\n")
"""


def test_pool_runs_the_handler_dead_letters_failures_and_stops_on_sigterm(
    serve: Serve, tmp_path: Path
) -> None:
    topic, group = unique("jobs"), unique("workers")
    b = ("--bootstrap-server", serve.bootstrap)
    out = tmp_path / "handled.txt"
    module = unique("handler").replace("-", "_")
    # The handler module sits in the working directory, as a user's would.
    (tmp_path / f"{module}.py").write_text(HANDLER.format(out=str(out)))
    assert cli("topics", "create", topic, "--partitions", "2", *b).exit_code == 0
    values = [f"job{i}" for i in range(9)]
    produced = cli(
        "produce", topic, *b, input="\n".join([*values[:4], "poison", *values[4:]]) + "\n"
    )
    assert produced.exit_code == 0, produced.output

    pool = subprocess.Popen(
        kvlog_cmd(
            "consume",
            topic,
            "--group",
            group,
            "--workers",
            "2",
            "--handler",
            f"{module}:handle",
            "--max-retries",
            "1",
            "--from-beginning",
            "--consumer-property",
            "session.timeout.ms=6000",
            *b,
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: (
                (out.exists() and len(out.read_text().splitlines()) >= 9) or pool.poll() is not None
            ),
            40,
            "the pool to handle every record",
        )
        assert pool.poll() is None, pool.communicate()
        dlq = cli(
            "consume",
            f"{topic}.DLQ",
            "--from-beginning",
            "--max-messages",
            "1",
            "--timeout-ms",
            "20000",
            "--print-headers",
            *b,
        )
        assert dlq.exit_code == 0, dlq.output
        headers, value = dlq.stdout.strip().split("\t")
        assert value == "poison"
        assert f"kvlog.dlq.topic:{topic}" in headers and "cannot handle poison" in headers
        pool.send_signal(signal.SIGTERM)
        stdout, stderr = pool.communicate(timeout=30)
    finally:
        if pool.poll() is None:
            os.killpg(pool.pid, signal.SIGKILL)
            pool.wait()
    assert pool.returncode == 0, stderr
    assert sorted(out.read_text().splitlines()) == sorted(values)
    assert "processed 9" in stdout and "dead_lettered 1" in stdout, stdout
    assert "Traceback" not in stderr
