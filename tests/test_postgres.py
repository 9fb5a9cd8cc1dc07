"""Shared work on a real PostgreSQL: an `mlflow server` whose backend store is PostgreSQL, and two `sweep`
workers (two processes) sharing one Optuna study. Skipped, with the reason, where PostgreSQL cannot start."""

import os
import subprocess
import sys
import time

import mlflow
import optuna
import pytest

from distill.phases.translate import TranslateParams, run as translate
from distill.tracking import lineage, phase_runs as tr
from tests import mini_study
from tests.conftest import ROOT, start_mlflow_server

pytestmark = pytest.mark.slow  # a PostgreSQL-backed server and two sweep workers in processes: ~4 min


@pytest.fixture(scope="module")
def pg_mlflow(postgres, tmp_path_factory):
    """A tracking server over a fresh PostgreSQL database: (server URI, database name)."""
    backend = postgres.create_database("mlflow")
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow-pg"), backend) as uri:
        yield uri, "mlflow"


@pytest.fixture
def on_server(pg_mlflow, monkeypatch, tmp_path):
    uri, _ = pg_mlflow
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def selected_on_server(pg_mlflow, tmp_path_factory):
    """The mini-study (translate -> two teachers -> select), written through the PostgreSQL-backed server."""
    uri, _ = pg_mlflow
    with mini_study.current_store(uri, tmp_path_factory.mktemp("pg-study")):
        return mini_study.build(mini_study.Sizes(limit=14, max_new_tokens=12, n=8, dev_size=4))


def test_phases_on_postgresql_server(postgres, pg_mlflow, selected_on_server,
                                                                       on_server):
    """Phases write to a PostgreSQL-backed server and reuse from it."""
    _, db = pg_mlflow
    # the runs are rows of PostgreSQL's `runs` table, with their phase tags
    rows = postgres.query(db, "SELECT r.run_uuid, r.status, t.value FROM runs r "
                              "JOIN tags t ON t.run_uuid = r.run_uuid "
                              "WHERE t.key = 'distill.phase'")
    phases = {run_id: (status, phase) for run_id, status, phase in rows}
    for name, run_id in selected_on_server.items():
        assert phases[run_id][0] == "FINISHED", name
    assert sorted(p for _, p in phases.values() if p in ("translate", "teacher", "select")) == \
        ["select", "teacher", "teacher", "translate"]
    run = mlflow.get_run(selected_on_server["select"])
    assert run.data.tags["distill.phase"] == "select"
    assert tr.read_jsonl_artifact(selected_on_server["select"], "train/7B.jsonl")  # artifacts through the server
    # typing the same command again reuses the finished run found in PostgreSQL
    seen = []
    with tr.on_phase_run(seen.append):
        assert translate(TranslateParams(limit=14)) == selected_on_server["translate"]
    assert seen[0].reused


def test_sweep_workers_share_study(postgres, pg_mlflow, selected_on_server, on_server, tmp_path):
    """Two sweep workers share one study in PostgreSQL."""
    storage = postgres.create_database("optuna")
    n_trials = 4
    env = {**os.environ, "MLFLOW_TRACKING_URI": on_server, "PYTHONPATH": str(ROOT),
           "MLFLOW_EXPERIMENT_NAME": "Default"}
    common = ["--preset", "offline", "--teacher", "7B", "--student", "qwen2.5-0.5b", "--n_trials", str(n_trials),
              "--storage", storage, "--max_new_tokens", "6", "--space", "learning_rate,num_train_epochs",
              "--select_run", selected_on_server["select"]]
    t0 = time.time()
    workers = [subprocess.Popen([sys.executable, str(ROOT / "entrypoints" / "sweep.py"), *common, "--worker", str(i)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
               for i in range(2)]
    outs = [w.communicate(timeout=600)[0] for w in workers]
    for w, out in zip(workers, outs):
        assert w.returncode == 0, out[-3000:]
    study = optuna.load_study(study_name="sft-offline-7B-qwen2.5-0.5b", storage=storage)
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    surplus = [t for t in trials if t.user_attrs.get("surplus")]
    assert len(finished) == n_trials and len(trials) == n_trials + len(surplus)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))                  # no duplicate trial numbers
    # both workers took part, each a sweep run of its own, every trial a nested run of one of them
    sweeps = lineage.search_phase_runs("sweep", status="FINISHED",
                                       extra=f"attributes.start_time >= {int(t0 * 1000)}")
    assert len(sweeps) == 2
    assert all(s.data.metrics["n_trials_this_worker"] >= 1 for s in sweeps)
    assert sum(s.data.metrics["n_trials_this_worker"] for s in sweeps) == n_trials
    parents = {s.info.run_id for s in sweeps}
    trial_runs = mlflow.search_runs(filter_string="tags.`distill.phase` = 'sweep-trial'", output_format="list")
    trial_runs = [r for r in trial_runs if r.data.tags.get("mlflow.parentRunId") in parents]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in trial_runs) == sorted(t.number for t in finished)
    # the study lives in PostgreSQL
    assert postgres.query("optuna", "SELECT count(*) FROM trials")[0][0] == len(trials)
