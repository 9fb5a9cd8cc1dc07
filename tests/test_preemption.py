"""Preemption through the real CLI: a scheduler's SIGTERM ends the runs as ^C does (one line, exit 143, nothing
left RUNNING, finished work kept)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

LONG_TIMEOUT = "900"  # a heartbeat timeout no rerun here could wait out: a take-over must come from process_gone
GRID = ("--preset", "offline", "--students", "qwen2.5-0.5b", "--limit", "4", "--train_limit", "16", "--n", "12")


def _env(tmp_path, **extra) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "DISTILL_HEARTBEAT_S": "1",
            "DISTILL_HEARTBEAT_TIMEOUT_S": LONG_TIMEOUT, **extra}


def _all_runs(client: MlflowClient) -> list:
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


def _running(client: MlflowClient) -> list:
    return [r for r in _all_runs(client) if r.info.status == "RUNNING"]


def _started(command: list[str], tmp_path, env: dict, log: str) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / log, "w"), start_new_session=True)


def _stop_when(proc: subprocess.Popen, ready, sig: int, group: bool = False, seconds: float = 500):
    """Poll `ready()` while `proc` runs; when it gives something, send `sig` (to the group: kill -9 of a machine)."""
    found, deadline = None, time.time() + seconds
    try:
        while found is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
            found = ready()
        if found is not None and proc.poll() is None:
            (os.killpg if group else os.kill)(proc.pid, sig)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return found


def _stderr_after_stop(tmp_path, log: str) -> list[str]:
    return [line for line in (tmp_path / log).read_text().splitlines() if line.strip()]


def _one_line_stop(tmp_path, log: str, what: str) -> None:
    """The stop is one line, the last, and nothing else went wrong on the way out."""
    lines = _stderr_after_stop(tmp_path, log)
    text = "\n".join(lines)
    stop = f"stopped by SIGTERM: finished work of {what} is kept; run the same command again to continue"
    assert lines[-1] == stop, text[-3000:]
    assert "Traceback" not in text and "leaked" not in text, text[-3000:]


def _shards_of_running(client: MlflowClient, phase: str, at_least: int):
    for run in _all_runs(client):
        if run.data.tags.get("distill.phase") == phase and run.info.status == "RUNNING":
            folder = run.info.artifact_uri.removeprefix("file://")
            if len(glob.glob(os.path.join(folder, "shards", "*.jsonl"))) >= at_least:
                return run
    return None


def test_sigterm_to_a_step_process_ends_its_runs_like_ctrl_c_and_keeps_its_shards(tmp_path):
    """A teacher entry point (building its translation first) preempted with SIGTERM mid-generation: exit 143,
    one line, its runs KILLED (before: the process vanished, 3 runs RUNNING, a resource_tracker warning)."""
    command = [sys.executable, str(ROOT / "entrypoints" / "teacher.py"), "--preset", "offline", "--teacher", "7B",
               "--shard_size", "2", "--batch_size", "1", "--max_new_tokens", "48"]
    env, client = _env(tmp_path), MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.search_experiments()  # the store's tables made here
    proc = _started(command, tmp_path, env, "first.log")
    stopped = _stop_when(proc, lambda: _shards_of_running(client, "teacher", 2), signal.SIGTERM)
    assert stopped is not None, (tmp_path / "first.log").read_text()[-3000:]
    assert proc.returncode == 143, (tmp_path / "first.log").read_text()[-3000:]
    _one_line_stop(tmp_path, "first.log", "teacher")
    assert _running(client) == []
    teacher = client.get_run(stopped.info.run_id)
    assert teacher.info.status == "KILLED" and teacher.data.tags["distill.killed_reason"] == "stopped by SIGTERM"

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming:" in again.stderr  # the shards of the stopped run were kept and taken over
    assert _running(client) == []


def _step_holding_work(client: MlflowClient):
    """A RUNNING step run of `main` (one that claimed its work) other than translate: `main` is mid-step."""
    for run in _all_runs(client):
        if run.info.status == "RUNNING" and run.data.tags.get("distill.phase") in ("teacher", "evaluate", "sft"):
            return run
    return None


def test_sigterm_to_main_mid_step_ends_main_and_its_step(tmp_path):
    """SIGTERM to `main` alone (Kubernetes signals the container's first process): it passes the stop on to the
    step's process group as a ^C, the step ends its run KILLED, `main` ends its own; exit 143, one line."""
    command = [sys.executable, str(ROOT / "entrypoints" / "main.py"), *GRID]
    env, client = _env(tmp_path), MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.search_experiments()
    proc = _started(command, tmp_path, env, "first.log")
    stopped = _stop_when(proc, lambda: _step_holding_work(client), signal.SIGTERM)
    assert stopped is not None, (tmp_path / "first.log").read_text()[-3000:]
    assert proc.returncode == 143, (tmp_path / "first.log").read_text()[-3000:]
    _one_line_stop(tmp_path, "first.log", "pipeline")
    runs = _all_runs(client)
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    killed = sorted(r.data.tags.get("distill.phase") for r in runs if r.info.status == "KILLED")
    assert killed == sorted(["main", stopped.data.tags["distill.phase"]])

    t0 = time.time()
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _running(client) == []
    finished_before = {r.data.tags["distill.cache_key"] for r in runs
                       if r.info.status == "FINISHED" and "distill.cache_key" in r.data.tags}
    main = [r for r in _all_runs(client) if r.data.tags.get("distill.phase") == "main" and r.info.status == "FINISHED"]
    assert len(main) == 1 and main[0].data.metrics["steps_reused"] >= len(finished_before) > 0
    assert time.time() - t0 < float(LONG_TIMEOUT)

