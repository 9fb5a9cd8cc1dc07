"""Steps of `main` in processes of their own: the run nests under the main run, a result or an error comes
back, and a step that dies is named with the run it had started."""

import multiprocessing
import os

import mlflow
import pytest

from distill import DistillError, pipeline
from distill.tracking import (
    phase_runs,
    phase_runs as phase_tracking,  # where a test's `tracking` is conftest's store fixture
)
from tests import step_fixtures
from tests.step_fixtures import FixtureParams


@pytest.fixture
def steps(tracking, monkeypatch):  # noqa: F811 - conftest's tracking store
    monkeypatch.setattr(pipeline, "ISOLATED", pipeline.ISOLATED | {"tests.step_fixtures"})
    ctx = multiprocessing.get_context("fork")
    with mlflow.start_run(run_name="main") as main:
        yield pipeline.Steps(ctx, main.info.run_id), main.info.run_id


def test_step_in_own_process_nested(steps):
    """A step runs in its own process nested under main."""
    step, main_id = steps
    run_id = step("fixture", step_fixtures.run, FixtureParams())
    run = mlflow.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == main_id and run.info.status == "FINISHED"
    assert int(run.data.params["pid"]) != os.getpid()
    assert step.log[-1]["run_id"] == run_id and not step.log[-1]["reused"]


AGAIN = "type the same command again to continue from there"


@pytest.mark.parametrize("how,message,then", [
    ("die", "its process ended (exit code 9) before the step finished", AGAIN),
    ("raise", "ValueError: boom", AGAIN),
    # a refusal repeats: typing the same command again cannot help (before: it said so)
    ("refuse", "n must be > 0 (got 0)", "fix that first (the same command again would fail the same way); the "
                                        "finished steps are kept"),
])
def test_failed_step_named(steps, how, message, then):
    """A failed step is named with its run."""
    step, _ = steps
    started = []
    with pytest.raises(DistillError) as e, phase_runs.on_phase_run(started.append):
        step("fixture", step_fixtures.run, FixtureParams(how=how))
    assert len(started) == 1  # reported by the child as it started, before it died
    assert str(e.value) == f"step fixture failed (run {started[0].run_id}): {message}; {then}"
    status = mlflow.get_run(started[0].run_id).info.status
    assert status == ("RUNNING" if how == "die" else "FAILED")  # a killed run stays unfinished: resumable


def test_fresh_input_skips_lookups(steps):
    """A step fed a run main just made skips the lookups before its claim."""
    step, _ = steps
    first = step("first", step_fixtures.run, FixtureParams())
    fed = step("fed", step_fixtures.run, FixtureParams(upstream=first))
    older = mlflow.tracking.MlflowClient().create_run(mlflow.active_run().info.experiment_id).info.run_id
    other = step("other", step_fixtures.run, FixtureParams(upstream=older))
    assert [mlflow.get_run(r).data.params["fresh_inputs"] for r in (first, fed, other)] == ["False", "True", "False"]


def test_fresh_inputs_find_finished_run(tracking, monkeypatch):  # noqa: F811
    """Fresh inputs still find a finished run after the claim.

    The lookups skipped before the claim are a saving, not a hole: the one after it still finds the work
    done (here: by another `main` that reused the same input and finished first) and points at it."""
    from distill.tracking import key_locks

    params = {"preset": "offline", "x": "1"}
    with phase_tracking.phase_run("select", params) as done:
        mlflow.log_text("{}\n", "dev.jsonl")  # what a select run's consumers read: reuse checks it is there
    lookups = []
    monkeypatch.setattr(key_locks, "find_same_work", lambda *a: lookups.append(a))
    monkeypatch.setattr(phase_tracking, "FRESH_INPUTS", True)
    with phase_tracking.phase_run("select", params) as again:
        pass
    assert again.reused and again.run_id == done.run_id and lookups == []
    pointer = [r for r in mlflow.search_runs(output_format="list") if r.data.tags.get("distill.reused_run_id")]
    assert [r.data.tags["distill.reused_run_id"] for r in pointer] == [done.run_id]


def _python_in(folder, code: str, store: str | None = None, timeout: int = 300):
    """`code` in a fresh interpreter in `folder` (with MLFLOW_TRACKING_URI at `store` there); its stdout split."""
    import subprocess
    import sys

    env = {**os.environ, **({"MLFLOW_TRACKING_URI": f"sqlite:///{folder / store}"} if store else {})}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=folder,
                         env=env)
    return out.stdout.split(), out.stderr[-3000:]


def test_unused_fork_server_killed_at_once(tmp_path):
    """The early fork server is killed at once when no step used it.

    `main` starts its step server before its own start-up (cli.run_phase -> prepare); a `main` that ends
    before its first step (bad input, all reused) must not wait for the server's imports to finish (~9 s on a
    quiet machine). Measured against those imports timed in the same interpreter, not against a fixed number of
    seconds, so that a loaded machine slows both alike."""
    code = ("import importlib, os, time\n"
            "from multiprocessing import forkserver\n"
            "from distill.pipeline import steps\n"
            "steps.start_server_early()\n"
            "pid = forkserver._forkserver._forkserver_pid\n"
            "time.sleep(0.5)\n"
            "t = time.perf_counter(); steps.stop_server(); took = time.perf_counter() - t\n"
            "try:\n    os.kill(pid, 0); alive = True\nexcept ProcessLookupError:\n    alive = False\n"
            "t = time.perf_counter()\n"
            "importlib.import_module('distill.pipeline.fork_server')  # what the server was importing\n"
            "imports = time.perf_counter() - t\n"
            "print(took, alive, imports)\n")
    (took, alive, imports), err = _python_in(tmp_path, code, timeout=300)
    assert alive == "False" and float(took) < float(imports) / 3, err


@pytest.mark.slow
def test_warmed_store_no_connection_forked(tmp_path):
    """The store warmed for the step server keeps no connection across a fork.

    distill.pipeline.fork_server warms MLflow's SQLite store so that steps inherit it; an SQLite connection that
    crossed a fork could corrupt the file, so none may be open when the server forks."""
    code = ("import os\n"
            "from mlflow.tracking import MlflowClient\n"
            "from distill.tracking import store\n"
            "store.warm_tracking_store()\n"
            "db = os.path.realpath('m.db')\n"
            "held = [fd for fd in os.listdir('/proc/self/fd') if os.path.realpath(f'/proc/self/fd/{fd}') == db]\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    c = MlflowClient(); r = c.create_run('0')\n"
            "    c.log_metric(r.info.run_id, 'x', 1.0); c.set_terminated(r.info.run_id); os._exit(0)\n"
            "_, status = os.waitpid(pid, 0)\n"
            "runs = MlflowClient().search_runs(['0'])\n"
            "print(os.path.exists(db), len(held), status, len(runs), runs[0].data.metrics['x'])\n")
    out, err = _python_in(tmp_path, code, store="m.db")
    assert out == ["True", "0", "0", "1", "1.0"], err


@pytest.mark.slow
def test_server_not_killed_mid_store_setup(tmp_path):
    """The step server is not killed half way through setting up a new store.

    The step server sets up a brand-new SQLite store itself when it gets there first; a `main` that ends
    then (bad input, an early error) waits for the setup instead of leaving a half-made file behind."""
    code = ("import os, time\n"
            "import mlflow  # as in `main`, imported by now: the stop below is at once\n"
            "from distill.pipeline import steps\n"
            "steps.start_server_early()\n"
            "deadline = time.time() + 120\n"
            "while not os.path.exists('m.db') and time.time() < deadline:\n"
            "    time.sleep(0.005)\n"
            "time.sleep(0.4)  # inside MLflow's table setup (~1 s here): a kill now left a file MLflow refuses\n"
            "steps.stop_server()\n"
            "from mlflow.tracking import MlflowClient\n"
            "print(os.path.exists('m.db'), [e.name for e in MlflowClient().search_experiments()])\n")
    out, err = _python_in(tmp_path, code, store="m.db")
    assert out == ["True", "['Default']"], err


PARENT = """
import multiprocessing, os, sys, time
from distill.pipeline.steps import die_with

def child(waiter):
    die_with(waiter)
    time.sleep(120)

if __name__ == "__main__":
    ctx = multiprocessing.get_context("forkserver")  # the step's parent is the fork server, not this process
    proc = ctx.Process(target=child, args=(os.getpid(),))
    proc.start()
    print(proc.pid, flush=True)
    time.sleep(120)
"""


def test_step_dies_with_its_waiter(tmp_path):
    """A step process dies with the process that waits for it.

    `kill -9` of `main` (or of an entry point building its upstream) ends its step too, not only the step's
    own parent (the fork server): a step left behind trains on, holding its GPU, while the next try waits."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    step_pid = int(parent.stdout.readline())
    os.kill(step_pid, 0)  # running
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(step_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(step_pid, signal.SIGKILL)
        pytest.fail("the step process outlived the process that waited for it")


WAITER = """
import multiprocessing, sys
import mlflow
from distill import pipeline
from tests import step_fixtures

if __name__ == "__main__":
    pipeline.ISOLATED = pipeline.ISOLATED | {"tests.step_fixtures"}
    with mlflow.start_run(run_name="main") as main:
        step = pipeline.Steps(multiprocessing.get_context("forkserver"), main.info.run_id)
        print(step("fixture", step_fixtures.run, step_fixtures.FixtureParams(how=sys.argv[1])), flush=True)
"""


def _gone_within(pid: int, seconds: float) -> bool:
    import time

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow  # a step killed (or left) with a grandchild, in processes: 18-140 s each here
@pytest.mark.parametrize("how,signal_name", [("leave", None), ("hold", "SIGKILL"), ("hold", "SIGTERM"),
                                             ("hold", "SIGINT")])
def test_what_a_step_started_ends_with_it(tmp_path, how, signal_name):
    """vLLM's EngineCore is a non-daemon child of the step that does not watch its parent: a step that ends, or
    whose waiter is killed (kill -9, a scheduler's SIGTERM) or interrupted (^C), takes such a grandchild with it.
    Otherwise the rerun's engine finds the GPU memory taken ("Free memory on device ... is less than desired")."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    (tmp_path / "waiter.py").write_text(WAITER)
    pids = tmp_path / "pids"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}", "DISTILL_TEST_PIDS": str(pids),
           "PYTHONPATH": str(ROOT)}
    waiter = subprocess.Popen([sys.executable, str(tmp_path / "waiter.py"), how], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not pids.exists() and waiter.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert pids.exists(), waiter.communicate()[1][-3000:]
    step_pid, grandchild = map(int, pids.read_text().split())
    try:
        if signal_name:
            waiter.send_signal(getattr(signal, signal_name))
        out, err = waiter.communicate(timeout=120)
        if how == "leave":
            assert waiter.returncode == 0 and len(out.split()) == 1, err[-3000:]
        assert _gone_within(grandchild, 10), f"the step's grandchild outlived {signal_name or 'the step'}"
        assert _gone_within(step_pid, 10)
    finally:
        for pid in (grandchild, step_pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_fork_after_cuda_respawns(steps, monkeypatch,
                                                                                               capsys):
    """A step forked after CUDA was initialised starts again spawned and so do later ones.

    A fork server whose preloading initialised CUDA: every step forked from it would die with "Cannot
    re-initialize CUDA in forked subprocess". The step notices at its start (torch's own flag) and does nothing;
    its waiter runs it, and every later step, spawned, and says so once. No GPU here: the forking process (this
    one) patches torch's flag, which a forked child inherits and a spawned one does not (it would report again)."""
    import torch

    from distill.log import setup_logging
    from distill.pipeline import steps as step_processes

    setup_logging()
    monkeypatch.setattr(step_processes, "SPAWN_STEPS", False, raising=False)
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: True)
    contexts, get_context = [], multiprocessing.get_context
    monkeypatch.setattr(multiprocessing, "get_context", lambda m=None: contexts.append(m) or get_context(m))
    step, main_id = steps
    started = []
    with phase_runs.on_phase_run(started.append):
        first = step("fixture", step_fixtures.run, FixtureParams())
        second = step("again", step_fixtures.run, FixtureParams())
    runs = [mlflow.get_run(r) for r in (first, second)]
    assert [(r.info.status, r.data.tags["mlflow.parentRunId"]) for r in runs] == [("FINISHED", main_id)] * 2
    assert [pr.run_id for pr in started] == [first, second]  # the forked try started no run
    assert contexts == ["spawn", "spawn"] and step_processes.SPAWN_STEPS  # each step's process: spawned
    assert all(int(r.data.params["pid"]) != os.getpid() for r in runs)
    err = capsys.readouterr().err
    assert err.count("CUDA was initialised while preloading the step processes; steps start with spawn") == 1, err
