"""README's "Using it from Python" example runs, and runs again on the same data dir
(issue 13: its second run used to fail on the topic it created the first time). Run as a
separate process, on a temporary data dir and free ports instead of ./kvlog-data and
README's ports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import kvlog

CHECKOUT = Path(kvlog.__file__).resolve().parents[1]
README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    text = README.read_text()
    section = text.split("## Using it from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    example = code.group(1)
    assert example.count('"./kvlog-data"') == 1
    example = example.replace('"./kvlog-data"', "DATA_DIR")
    example, found = re.subn(r'listen="tcp://127\.0\.0\.1:\d+"', "listen=LISTEN", example)
    assert found == 1, example
    return 'import sys\nDATA_DIR, LISTEN = sys.argv[1], "tcp://127.0.0.1:0"\n' + example


def test_the_readme_example_runs_twice(tmp_path: Path) -> None:
    script = tmp_path / "readme_example.py"
    script.write_text(_example())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
    for run in (1, 2):
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "data")],
            capture_output=True,
            text=True,
            timeout=100,
            env=env,
        )
        assert done.returncode == 0, f"run {run}: {done.stderr}"
        lines = done.stdout.splitlines()
        assert len(lines) == 4, f"run {run}: {done.stdout}"  # the sent record, then three read
