"""`kill -9` of the whole `mlflow run` process tree during an sft step, then the same command again: no run is
left RUNNING (the killed `main`, the run `mlflow run` opened and the killed step are marked KILLED), and no
work is done twice (each step's work has exactly one FINISHED run; the killed sft is taken over)."""

import collections
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from distill.training.train import UPLOAD_COMPLETE
from tests.conftest import ROOT

GRID = ("-P", "preset=offline", "-P", "students=qwen2.5-0.5b", "-P", "limit=4", "-P", "train_limit=16", "-P", "n=12")


def _all_runs(client: MlflowClient) -> list:
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=1000)


def _checkpointed_sft(client: MlflowClient):
    """A RUNNING sft run with a checkpoint fully uploaded, or None."""
    for run in _all_runs(client):
        if run.data.tags.get("distill.phase") == "sft" and run.info.status == "RUNNING":
            folder = run.info.artifact_uri.removeprefix("file://")
            if any(UPLOAD_COMPLETE in files for _, _, files in os.walk(os.path.join(folder, "checkpoints"))):
                return run
    return None


@pytest.mark.slow
def test_killed_mlflow_run_then_rerun(tmp_path):
    """A killed `mlflow run` leaves no run running and no work done twice."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "DISTILL_HEARTBEAT_S": "1", "DISTILL_HEARTBEAT_TIMEOUT_S": "3"}
    command = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local", *GRID]
    client = MlflowClient(uri)
    client.search_experiments()  # the store's tables made here, not by two processes at once
    with open(tmp_path / "first.log", "w") as log:
        # its own process group: the CLI, main, the fork server, steps
        first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    killed = None
    try:
        deadline = time.time() + 400
        while killed is None and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
            killed = _checkpointed_sft(client)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert killed is not None, (tmp_path / "first.log").read_text()[-3000:]
    assert sum(r.info.status == "RUNNING" for r in _all_runs(client)) == 3  # main, `mlflow run`'s, the sft

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    runs = _all_runs(client)
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    dead = {r.info.run_id: r for r in runs if r.info.status == "KILLED"}
    kinds = sorted(r.data.tags.get("distill.phase", "mlflow run") for r in dead.values())
    assert (kinds == ["main", "mlflow run", "sft"]
            and all("distill.killed_reason" in r.data.tags for r in dead.values()))
    # each piece of work (a cache key, in its experiment) has exactly one FINISHED run
    finished = collections.Counter((r.info.experiment_id, r.data.tags["distill.cache_key"]) for r in runs
                                   if r.info.status == "FINISHED" and "distill.cache_key" in r.data.tags)
    keys = {(r.info.experiment_id, r.data.tags["distill.cache_key"])
            for r in runs if "distill.cache_key" in r.data.tags}
    assert set(finished) == keys and set(finished.values()) == {1}
    # the killed sft was taken over from its uploaded checkpoint by the one FINISHED run of its work
    key = killed.data.tags["distill.cache_key"]
    (heir,) = [r for r in runs if r.data.tags.get("distill.cache_key") == key and r.info.status == "FINISHED"]
    assert heir.data.tags["distill.resumed_from"].startswith(killed.info.run_id + ":checkpoint-")
    assert f"taken over by run {heir.info.run_id}" in dead[killed.info.run_id].data.tags["distill.killed_reason"]
    mains = [r for r in runs if r.data.tags.get("distill.phase") == "main"]
    assert sorted(r.info.status for r in mains) == ["FINISHED", "KILLED"]
    assert 0 < mains[0].data.metrics["steps_reused"] < mains[0].data.metrics["steps"] == 13
