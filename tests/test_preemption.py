"""Preemption through the real CLI: a scheduler's SIGTERM ends the runs as ^C does (one line, exit 143, nothing
left RUNNING, finished work kept), and a rerun after `kill -9` on the same machine takes over at once, without
waiting for the dead try's heartbeat to age, and leaves no run RUNNING when it ends."""

from __future__ import annotations

import collections
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
    """Poll `ready()` while `proc` runs; when it gives something, send `sig` (to the group: kill -9 of a machine).
    What `ready()` gave, or None when the process ended before (or the moment came too late to stop it)."""
    found, sent, deadline = None, False, time.time() + seconds
    try:
        while found is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
            found = ready()
        if found is not None and proc.poll() is None:
            (os.killpg if group else os.kill)(proc.pid, sig)
            sent = True
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return found if sent else None


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


@pytest.mark.slow
def test_sigterm_to_step_keeps_its_shards(tmp_path):
    """SIGTERM to a step process ends its runs like Ctrl-C and keeps its shards.

    A teacher entry point (building its translation first) preempted with SIGTERM mid-generation: exit 143,
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


@pytest.mark.slow
def test_sigterm_to_main_ends_its_step(tmp_path):
    """SIGTERM to main mid-step ends main and its step.

    SIGTERM to `main` alone (Kubernetes signals the container's first process): it passes the stop on to the
    step's process group as a ^C, the step ends its run KILLED, `main` ends its own; exit 143, one line."""
    command = [sys.executable, str(ROOT / "entrypoints" / "main.py"), *GRID]
    env, client = _env(tmp_path), MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.search_experiments()
    proc = _started(command, tmp_path, env, "first.log")
    stopped = _stop_when(proc, lambda: _step_holding_work(client), signal.SIGTERM)
    assert stopped is not None, (tmp_path / "first.log").read_text()[-3000:]
    assert proc.returncode == 143, (tmp_path / "first.log").read_text()[-3000:]
    _one_line_stop(tmp_path, "first.log", "main")
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


def _steps(client: MlflowClient, status: str) -> list:
    return [r for r in _all_runs(client) if r.info.status == status and r.data.tags.get("distill.phase")
            not in (None, "main")]


def _between_steps(client: MlflowClient, finished_before: int):
    """`main` between two steps: one more step finished since it started, and none is running."""
    finished = _steps(client, "FINISHED")
    if len(finished) > finished_before and not _steps(client, "RUNNING"):
        return finished[0]
    return None


def _phase_running(client: MlflowClient, phase: str):
    return next((r for r in _steps(client, "RUNNING") if r.data.tags["distill.phase"] == phase), None)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # four `mlflow run`s of a 13-step grid: 5-6 min on a loaded 2-core machine
def test_rerun_after_kill_9_takes_over(tmp_path):
    """A rerun after kill -9 takes over at once and leaves no run running.

    `kill -9` of the whole `mlflow run` process group (a lost machine) during a step that holds a claim, between
    two steps, and during evaluate, each followed by the same command: with a heartbeat timeout of 15 minutes, each
    rerun marks the dead tries KILLED at once (their processes are gone on this machine) and takes their work
    over; the last one leaves no run RUNNING (before: `main`'s run and `mlflow run`'s stayed RUNNING) and no work
    FINISHED twice."""
    grid = [x for k, v in zip(GRID[::2], GRID[1::2]) for x in ("-P", f"{k.removeprefix('--')}={v}")]
    command = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local", *grid]
    env, client = _env(tmp_path), MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.search_experiments()
    took_over: list[float] = []
    dead: list[str] = []
    for i, point in enumerate(["a step holding a claim", "between steps", "evaluate", None]):
        before = len(_steps(client, "FINISHED"))
        ready = {"a step holding a claim": lambda: _step_holding_work(client),
                 "between steps": lambda before=before: _between_steps(client, before),
                 "evaluate": lambda: _phase_running(client, "evaluate")}.get(point)
        started = time.time()
        proc = _started(command, tmp_path, env, f"try{i}.log")
        if ready is None:
            assert proc.wait(timeout=600) == 0, (tmp_path / f"try{i}.log").read_text()[-3000:]
        else:
            assert _stop_when(proc, ready, signal.SIGKILL, group=True) is not None, \
                f"{point}: " + (tmp_path / f"try{i}.log").read_text()[-3000:]
        if dead:  # the runs the kill before left RUNNING: this try ended them, long before any heartbeat aged
            ends = [client.get_run(r).info for r in dead]
            assert all(e.status == "KILLED" for e in ends) or point is not None
            mine = min(r.info.start_time for r in _all_runs(client)
                       if r.data.tags.get("distill.phase") == "main" and r.info.start_time >= started * 1000)
            took_over += [(e.end_time - mine) / 1000 for e in ends if e.status == "KILLED"]
        dead = [r.info.run_id for r in _running(client)]
        assert point is None or dead, "the kill left no run RUNNING: it came too late"

    runs = _all_runs(client)
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    assert took_over and max(took_over) < 120, took_over  # the heartbeat timeout is 900 s
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert all("distill.killed_reason" in r.data.tags for r in killed)
    assert sum(r.data.tags.get("distill.phase") == "main" for r in killed) == 3
    finished = collections.Counter((r.info.experiment_id, r.data.tags["distill.cache_key"]) for r in runs
                                   if r.info.status == "FINISHED" and "distill.cache_key" in r.data.tags)
    keys = {(r.info.experiment_id, r.data.tags["distill.cache_key"])
            for r in runs if "distill.cache_key" in r.data.tags}
    assert set(finished) == keys and set(finished.values()) == {1}
    print("take-over after kill -9, seconds after the rerun's main run started: "
          f"{sorted(round(t, 1) for t in took_over)}")


def test_try_dead_only_where_pid_checkable(tracking, monkeypatch):
    """A try is dead at once only where its process can be checked.

    Fresh heartbeats all: a try of this machine whose process ended, or whose pid now belongs to a process
    started at another time, is dead; one whose process lives, and one of another machine, boot or pid namespace
    (a container), is left to the heartbeat rule."""
    import mlflow

    from distill.tracking import key_locks

    monkeypatch.setenv("DISTILL_HEARTBEAT_TIMEOUT_S", LONG_TIMEOUT)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    here = key_locks.whereabouts()
    assert set(here) == {"distill.host", "distill.boot_id", "distill.pid_namespace", "distill.pid",
                         "distill.pid_start"}
    ended.wait()
    tries = {"alive": here, "ended": {**here, "distill.pid": str(ended.pid)},
             "pid reused": {**here, "distill.pid_start": str(int(here["distill.pid_start"]) - 1)},
             "other host": {**here, "distill.host": here["distill.host"] + "-other", "distill.pid": str(ended.pid)},
             "other boot": {**here, "distill.boot_id": "0" * 36, "distill.pid": str(ended.pid)},
             "other container": {**here, "distill.pid_namespace": "pid:[1]", "distill.pid": str(ended.pid)},
             "no whereabouts": {}}
    client, exp = MlflowClient(), mlflow.get_experiment_by_name("Default").experiment_id
    beat = {"distill.cache_key": "k", "distill.phase": "translate", "distill.heartbeat": f"{time.time():.3f}"}
    ids = {name: client.create_run(exp, tags={**beat, **tags}).info.run_id for name, tags in tries.items()}
    me = client.create_run(exp).info.run_id
    marked = key_locks.mark_dead("k", me)
    assert {name for name, run_id in ids.items() if run_id in marked} == {"ended", "pid reused"}
    reason = client.get_run(ids["ended"]).data.tags["distill.killed_reason"]
    assert reason == f"its process {ended.pid} on this machine is gone; taken over by run {me}"
    assert {r.info.run_id for r in key_locks.find_unfinished("k")} == {ids["ended"], ids["pid reused"]}


def test_unreaped_process_counts_as_gone(tracking):
    """A process that ended but was not reaped is gone.

    A step killed alone (the OOM killer) stays a zombie until its parent reaps it: its pid and start time
    are still in /proc, and its run must not pass for live."""
    import mlflow

    from distill.tracking import key_locks

    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while not open(f"/proc/{zombie.pid}/stat").read().rpartition(")")[2].split()[0] == "Z":
        assert time.time() < deadline
        time.sleep(0.05)
    start = open(f"/proc/{zombie.pid}/stat").read().rpartition(")")[2].split()[19]
    tags = {**key_locks.whereabouts(), "distill.pid": str(zombie.pid), "distill.pid_start": start,
            "distill.heartbeat": f"{time.time():.3f}"}
    client = MlflowClient()
    run = client.get_run(client.create_run(mlflow.get_experiment_by_name("Default").experiment_id,
                                           tags=tags).info.run_id)
    assert key_locks.process_gone(run) and not key_locks.is_live(run)
    zombie.wait()
