"""Packaging: one ``kvlog`` namespace installed, the same imports in a plain checkout.

The repository keeps kvlog/, ipc/, workers/ and tools/ side by side; the wheel must map
them to kvlog, kvlog.ipc, kvlog.workers and kvlog.tools and put no generic top-level
``ipc``/``workers``/``tools`` into a user's site-packages (DESIGN.md section 1).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import site
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SIBLINGS = ("ipc", "workers", "tools")

# Not copied into the build tree: VCS data, build output, caches, local data.
_BUILD_IGNORE = shutil.ignore_patterns(
    ".git",
    "build",
    "dist",
    ".venv",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "kvlog-data",
    "*.so",
    "*.mdb",
)


def _run(
    cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, (
        f"{cmd} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc


def _processes_of(venv: Path) -> list[int]:
    """Pids of live processes whose command line runs the venv's Python (or scripts)."""
    needle = str(venv).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if needle in cmdline:
                pids.append(int(entry.name))
    return pids


def _run_group(cmd: list[str], *, cwd: Path, env: dict[str, str], venv: Path) -> None:
    """Run a command that starts worker processes; whatever happens, none outlives it."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd} did not finish in 180 s\n--- stdout\n{out}\n--- stderr\n{err}")
    finally:
        # The workers share the command's process group; a clean exit leaves none (give
        # the last ones a moment to be reaped).
        deadline = time.monotonic() + 10
        while (leftover := _processes_of(venv)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if leftover:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            for pid in leftover:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, (
        f"{cmd} exited {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"
    )
    assert not leftover, f"{cmd} left processes running: {leftover}"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


# A snippet that drops setuptools' editable-install finders, so an import can only come
# from sys.path (the checkout or the venv), never from wherever `pip install -e` pointed.
_NO_EDITABLE_FINDERS = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path "
    "if not getattr(f, '__module__', '').startswith('__editable__')]"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the checkout (the checkout stays clean)."""
    src = tmp_path_factory.mktemp("src") / "kvlog"
    shutil.copytree(REPO, src, ignore=_BUILD_IGNORE)
    out = tmp_path_factory.mktemp("wheelhouse")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(src),
        ],
        cwd=out,
        env=_clean_env(),
    )
    (built,) = out.glob("kvlog-*.whl")
    return built


def _make_venv(path: Path) -> Path:
    """A fresh venv that sees this interpreter's packages (runtime deps need no download)."""
    _run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)],
        cwd=path.parent,
        env=_clean_env(),
    )
    python = path / "bin" / "python"
    if sys.prefix != sys.base_prefix:
        # We run inside a venv: its packages are not the base interpreter's "system" ones.
        purelib = _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=path.parent,
            env=_clean_env(),
        ).stdout.strip()
        Path(purelib, "_outer_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


_VENV_CHECK = textwrap.dedent(
    """
    import json, sys, sysconfig
    from pathlib import Path

    venv = Path(sys.prefix).resolve()
    repo = Path(sys.argv[1]).resolve()
    data_dir = Path(sys.argv[2])

    import kvlog
    import kvlog.ipc, kvlog.tools, kvlog.workers

    files = {m.__name__: Path(m.__file__).resolve()
             for m in (kvlog, kvlog.ipc, kvlog.tools, kvlog.workers)}
    site_dirs = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    stray = sorted(str(d / name) for d in site_dirs for name in ("ipc", "workers", "tools")
                   if (d / name).exists() or (d / (name + ".py")).exists())

    from kvlog import LogDir, PartitionLog, TopicPartition
    from kvlog.batch import build_batch, decode

    with LogDir(data_dir) as store:
        log = PartitionLog(store, TopicPartition("t", 0))
        sent = [(b"k%d" % i, b"v%d" % i) for i in range(50)]
        bases = log.append([build_batch(sent[:20]), build_batch(sent[20:])])
        got = [(r.offset, r.key, r.value) for base, batch in log.read(0)
               for r in decode(batch, base)]

    print(json.dumps({
        "venv": str(venv),
        "files": {k: str(v) for k, v in files.items()},
        "in_venv": {k: v.is_relative_to(venv) for k, v in files.items()},
        "in_repo": {k: v.is_relative_to(repo) for k, v in files.items()},
        "stray": stray,
        "bases": bases,
        "round_trip": got == [(i, k, v) for i, (k, v) in enumerate(sent)],
    }))
    """
)


@pytest.mark.timeout(300)
def test_wheel_has_one_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"kvlog"}, sorted(top)
    for sibling in SIBLINGS:
        assert f"kvlog/{sibling}/__init__.py" in names
    assert "kvlog/tools/cli.py" in names
    (info,) = dist_info
    assert zipfile.ZipFile(wheel).read(f"{info}/top_level.txt").split() == [b"kvlog"]
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "kvlog = kvlog.tools.cli:main" in entry_points


@pytest.mark.timeout(300)
def test_wheel_installs_and_runs_in_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    python = _make_venv(tmp_path / "venv")
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            str(wheel),
        ],
        cwd=tmp_path,
        env=_clean_env(),
    )
    outside = tmp_path / "elsewhere"  # a cwd outside the repository
    outside.mkdir()
    script = outside / "check.py"
    script.write_text(_VENV_CHECK)
    proc = _run(
        [str(python), str(script), str(REPO), str(outside / "data")], cwd=outside, env=_clean_env()
    )
    report = json.loads(proc.stdout)
    assert all(report["in_venv"].values()), report["files"]
    assert not any(report["in_repo"].values()), report["files"]
    assert report["stray"] == []
    assert report["bases"] == [0, 20]
    assert report["round_trip"]

    kvlog_bin = tmp_path / "venv" / "bin" / "kvlog"
    assert kvlog_bin.is_file() and os.access(kvlog_bin, os.X_OK)
    version = _run([str(kvlog_bin), "--version"], cwd=outside, env=_clean_env()).stdout
    assert "kvlog" in version
    # A produce/consume through the real process group (broker, coordinator, node), all
    # running from the wheel: `kvlog demo` starts them, round-trips records, stops them.
    _run_group(
        [str(kvlog_bin), "demo", "--data-dir", str(outside / "demo")],
        cwd=outside,
        env=_clean_env(COLUMNS="120"),
        venv=tmp_path / "venv",
    )
    perf = _run(
        [
            str(kvlog_bin),
            "perf",
            "log",
            "--records",
            "3000",
            "--batch",
            "100",
            "--json",
            "--batches-per-txn",
            "2",
            "--preload",
            "1000",
            "--data-dir",
            str(outside / "perf"),
        ],
        cwd=outside,
        env=_clean_env(),
    )
    figures = json.loads(perf.stdout)
    assert figures["preloaded_records"] == 1000
    for phase in ("kvlog_write", "raw_write", "kvlog_read", "raw_read", "kvlog_read_decode"):
        assert figures[phase]["records"] == 3000
    assert figures["kvlog_write"]["txns"] == 15


def test_log_never_imports_zeromq_or_processes(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import kvlog, sys
        kvlog.LogDir
        from kvlog.batch import build_batch, decode
        with kvlog.LogDir({str(tmp_path / "data")!r}) as store:
            log = kvlog.PartitionLog(store, kvlog.TopicPartition("t", 0))
            log.append([build_batch([(b"k", b"v")])])
            assert [r.value for b, v in log.read(0) for r in decode(v, b)] == [b"v"]
        loaded = sorted(m for m in ("zmq", "multiprocess") if m in sys.modules)
        assert not loaded, loaded
        """
    )
    _run(
        [sys.executable, "-c", _NO_EDITABLE_FINDERS + "\n" + code],
        cwd=tmp_path,
        env=_clean_env(PYTHONPATH=str(REPO)),
    )


def test_checkout_imports_siblings_without_installation() -> None:
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import kvlog, kvlog.ipc, kvlog.workers, kvlog.tools
        repo = Path(sys.argv[1]).resolve()
        for module, folder in ((kvlog, "kvlog"), (kvlog.ipc, "ipc"),
                               (kvlog.workers, "workers"), (kvlog.tools, "tools")):
            where = Path(module.__file__).resolve()
            assert where == repo / folder / "__init__.py", (module.__name__, where)
        import kvlog.tools.cli
        assert kvlog.tools.cli.main.name == "main"
        """
    )
    _run(
        [sys.executable, "-c", _NO_EDITABLE_FINDERS + "\n" + code, str(REPO)],
        cwd=REPO,
        env=_clean_env(PYTHONPATH=str(REPO)),
    )
