"""A full disk through the real CLI: one line naming the path, what was written and the room left; no run
left RUNNING; the same command after freeing space goes on.

The disk is a real one: a small tmpfs holding the store and its artifacts (mounting needs root, as in CI;
elsewhere those tests skip and say why), and the process's file-size limit (`ulimit -f`, EFBIG), which
needs nothing.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import plotly
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # entry points and `main` on a full filesystem, end to end: ~5 min

MB = 1_000_000


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MB tmpfs of the test's own (store and artifacts on it; fill() sets the room left), unmounted after."""
    where = tmp_path / "disk"
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A file that leaves `leave` bytes free on the disk; delete it to free the space."""
    filler = disk / f"filler-{uuid.uuid4().hex[:6]}"
    size = shutil.disk_usage(disk).free - leave
    with open(filler, "wb") as f:
        while size > 0:
            size -= f.write(b"\0" * min(size, MB))
    return filler


def cli(phase: str, disk: Path, *args: str, limit: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{disk / 'mlflow.db'}"}
    preexec = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))) if limit else None
    return subprocess.run([sys.executable, str(ROOT / "entrypoints" / f"{phase}.py"), *args], capture_output=True,
                          text=True, env=env, cwd=disk, timeout=900, preexec_fn=preexec)


def runs(disk: Path) -> list[tuple[str, str, str]]:
    """(name, status, id) of every run of the store, read without MLflow."""
    with sqlite3.connect(disk / "mlflow.db") as db:
        return db.execute("select name, status, run_uuid from runs order by start_time").fetchall()


def error_line(proc) -> str:
    """The one line a failure printed: stderr holds it and the `[distill]` progress lines, nothing else."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    other = [x for x in proc.stderr.splitlines() if x.strip() and not x.startswith("[distill]")]
    assert len(other) == 1 and other[0].startswith("error: "), proc.stderr[-3000:]
    return other[0]


def test_full_disk_one_line_then_rerun(small_disk):
    """A full disk is one line leaves nothing running and the rerun goes on."""
    disk = small_disk
    # The issue's case: the figures' plotly.js (4.8 MB) is written to a disk with 2.5 MB left.
    filler = fill(disk, int(2.5 * MB))
    proc = cli("report", disk, "--upstream", "false")
    assert proc.returncode == 2
    line = error_line(proc)
    assert f"error: no space left on device writing {disk}/" in line and "/plotly.min.mjs (plotly.js, shared by " \
        "the experiment's figures, 4.8 MB to write): " in line, line
    assert f" MB free on {disk}; free space there and type the same command again" in line, line
    assert [s for _, s, _ in runs(disk)] == ["FAILED", "FAILED"]       # the report and the shared asset's run
    assert not list(disk.glob("mlruns/*/*/artifacts/figures/plotly.min.mjs"))   # its partial copy is gone

    # The store itself on a disk with nothing left: said as such, in one line.
    more = fill(disk, 0)
    proc = cli("report", disk, "--upstream", "false")
    assert proc.returncode == 2
    line = error_line(proc)
    assert line == (f"error: no space left on device writing the tracking store {disk}/mlflow.db: 0 B free on {disk}; "
                    "free space there and type the same command again"), line
    assert "RUNNING" not in [s for _, s, _ in runs(disk)]

    filler.unlink(), more.unlink()
    proc = cli("report", disk, "--upstream", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    asset = f"plotly.js {plotly.__version__}"
    assert [(n, s) for n, s, _ in runs(disk)] == [("report", "FAILED"), (asset, "FAILED"), ("report", "FINISHED"),
                                                  (asset, "FINISHED")]


def test_main_names_step_a_full_disk_stopped(small_disk):
    """Main names the step a full disk stopped and goes on once space is freed."""
    disk, grid = small_disk, ("--preset", "offline", "--teachers", "7B,72B", "--students", "qwen2.5-0.5b")
    assert cli("main", disk, *grid).returncode == 0
    # The runs that wrote figures forgotten (deleted), so that the next `main` writes plotly.js again.
    client = mlflow.MlflowClient(f"sqlite:///{disk / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    for where in ("tags.`distill.phase` = 'tokens'", "tags.`distill.phase` = 'report'",
                  "tags.`distill.asset` = 'plotly.js'"):
        for run in client.search_runs(experiments, where):
            client.delete_run(run.info.run_id)
    filler = fill(disk, int(2.5 * MB))
    proc = cli("main", disk, *grid)
    assert proc.returncode == 2
    line = error_line(proc)
    assert re.fullmatch(rf"error: step tokens failed \(run \w+\): no space left on device writing {disk}/\S+/"
                        r"plotly\.min\.mjs \(plotly\.js, shared by the experiment's figures, 4\.8 MB to write\): "
                        rf"[\d.]+ MB free on {disk}; free space there and type the same command again", line), line
    assert "RUNNING" not in [s for _, s, _ in runs(disk)]
    filler.unlink()
    proc = cli("main", disk, *grid)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"main: \d+ steps, [1-9]\d* reused", proc.stderr) and "main: tokens: ran" in proc.stderr
    assert "RUNNING" not in [s for _, s, _ in runs(disk)]


def test_file_size_limit_is_one_line(tmp_path):
    """A file size limit is one line naming the limit.

    `ulimit -f` (EFBIG, no root needed): the line names the limit instead of free space."""
    proc = cli("report", tmp_path, "--upstream", "false", limit=3 * MB)
    assert proc.returncode == 2
    line = error_line(proc)
    assert line.startswith("error: file too large writing ") and "/plotly.min.mjs (plotly.js, shared by the " \
        "experiment's figures, 4.8 MB to write): this process may write files of at most 3.0 MB (`ulimit -f`); " \
        "raise the limit and type the same command again" in line, line
    assert "RUNNING" not in [s for _, s, _ in runs(tmp_path)]
    proc = cli("report", tmp_path, "--upstream", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
