"""Workers started at the same instant on empty storage all succeed: sweep workers creating one Optuna
storage, phases creating one MLflow tracking store (a `postgresql://` tracking URI opened directly), on
fresh PostgreSQL databases, several rounds. Without distill.tracking.schema_lock all but one worker of a round
died with `UniqueViolation ... (studydirection, 2200) already exists` (or `experiments`, `alembic_version`)."""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # commands and workers started together in processes on new stores: ~5 min

ROUNDS, WORKERS = 3, 4


@pytest.fixture(scope="module")
def started_together(postgres, tmp_path_factory):
    """tests/concurrent_open.py, one process that forks WORKERS workers per round, released by one barrier:
    ROUNDS fresh databases for Optuna, ROUNDS for MLflow, one fresh SQLite file for Optuna (the sweep's
    default storage). {kind: [(url, what each worker got), ...]}"""
    tmp = tmp_path_factory.mktemp("race")
    rounds = [("optuna", postgres.create_database(f"race_optuna_{i}")) for i in range(ROUNDS)]
    rounds.append(("optuna", f"sqlite:///{tmp / 'optuna.db'}"))
    rounds += [("mlflow", postgres.create_database(f"race_mlflow_{i}")) for i in range(ROUNDS)]
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "concurrent_open.py"), str(WORKERS),
                           *(f"{kind}:{url}" for kind, url in rounds)],
                          capture_output=True, text=True, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    out = {"optuna": [], "mlflow": []}
    for (kind, url), workers in zip(rounds, got):
        out[kind].append((url, workers))
    return out


def test_sweep_workers_share_one_study(postgres, started_together):
    """Sweep workers started together on empty storage share one study."""
    rounds = started_together["optuna"]
    assert [workers for _, workers in rounds] == [["ok"] * WORKERS] * len(rounds), rounds
    for url, _ in rounds:
        trials = optuna.load_study(study_name="concurrent", storage=url).trials
        assert sorted(t.value for t in trials) == list(range(WORKERS)), url  # one study, every worker's trial
        if url.startswith("postgresql"):
            db = url.rsplit("/", 1)[1]
            assert postgres.query(db, "SELECT count(*) FROM version_info")[0][0] == 1
            assert postgres.query(db, "SELECT count(*) FROM alembic_version")[0][0] == 1


def test_phases_together_on_postgresql(postgres, started_together):
    """Phases started together on an empty PostgreSQL tracking store all write."""
    rounds = started_together["mlflow"]
    assert [workers for _, workers in rounds] == [["ok"] * WORKERS] * ROUNDS, rounds
    for url, _ in rounds:
        db = url.rsplit("/", 1)[1]
        assert postgres.query(db, "SELECT count(*) FROM experiments WHERE name = 'distill-offline'")[0][0] == 1
        assert postgres.query(db, "SELECT count(*) FROM runs r JOIN experiments e USING (experiment_id) "
                                  "WHERE e.name = 'distill-offline' AND r.status = 'FINISHED'")[0][0] == WORKERS
        assert postgres.query(db, "SELECT count(*) FROM alembic_version")[0][0] == 1


# SQLite: MLflow's own store creation, as `mlflow run` does it before any project code runs. Without
# distill.tracking.sqlite_store (MLflow's `sqlite` store builder, an entry point of this package) most rounds
# ended with workers dead in alembic ("table _alembic_tmp_metrics already exists", "Online migration
# expected to match one row") and the file half-migrated for good.

def _race(tmp_path, kind: str, files: list) -> list[list[str]]:
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "concurrent_open.py"), str(WORKERS),
                           *(f"{kind}:sqlite:///{f}" for f in files)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _problem(db) -> str | None:
    import sqlalchemy

    from distill.tracking.sqlite_repair import schema_problem

    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    try:
        return schema_problem(engine)
    finally:
        engine.dispose()


def test_clients_together_on_new_sqlite(tmp_path):
    """MLflow clients started together on a new SQLite file all work and leave it whole."""
    files = [tmp_path / f"round{i}" / "mlflow.db" for i in range(ROUNDS)]
    got = _race(tmp_path, "mlflowcli", files)
    assert got == [["ok"] * WORKERS] * ROUNDS, got
    for db in files:
        assert _problem(db) is None


CREATE = ("import sys; from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as S; "
          "S(sys.argv[1], './mlruns')")


def half_migrated_store(tmp_path):
    """A store MLflow itself left half-migrated for good, for real: its own store creation (no distill) killed
    with kill -9 while it runs its migrations (a few seconds), retried until a kill landed inside one."""
    import random
    import sqlite3
    import time

    for i in range(8):
        db = tmp_path / f"broken{i}" / "mlflow.db"
        db.parent.mkdir()
        proc = subprocess.Popen([sys.executable, "-c", CREATE, f"sqlite:///{db}"], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            try:
                with sqlite3.connect(db, timeout=0.1) as conn:
                    if conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]:
                        break
            except sqlite3.Error:
                pass
            time.sleep(0.02)
        time.sleep(random.uniform(0.0, 1.0) * (i + 1) / 4)
        proc.kill()
        proc.wait()
        problem = _problem(db)
        if problem and not _mlflow_opens_a_copy(db):  # broken for good: MLflow alone cannot go on from there
            return db, problem
    raise AssertionError("MLflow's own store creation, killed 8 times, never left a store it cannot open")


def _mlflow_opens_a_copy(db) -> bool:
    """Whether MLflow's own store (no distill) opens a copy of `db`, finishing what it can (a kill between two
    migrations it finishes; one inside a migration, or the race's leftovers, it never gets past)."""
    import shutil

    copy = db.with_name("copy.db")
    shutil.copy2(db, copy)
    try:
        return subprocess.run([sys.executable, "-c", CREATE, f"sqlite:///{copy}"], cwd=db.parent,
                              capture_output=True, timeout=300).returncode == 0
    finally:
        copy.unlink()


def test_half_migrated_repaired_next(tmp_path):
    """A store half migrated by MLflow is repaired by the next command."""
    from tests.conftest import run_entry

    db, problem = half_migrated_store(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = run_entry("translate", "--preset", "offline", "--limit", "2", cwd=work,
                     env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"repaired the tracking store {db}" in proc.stderr and "created anew" in proc.stderr
    assert _problem(db) is None


def test_documented_repair_command(tmp_path):
    """One documented command repairs a half migrated store."""
    db, problem = half_migrated_store(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "distill.tracking.sqlite_repair", f"sqlite:///{db}"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"repaired the tracking store {db}: it had {problem}")
    assert _problem(db) is None
    again = subprocess.run([sys.executable, "-m", "distill.tracking.sqlite_repair", f"sqlite:///{db}"],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0 and "nothing to repair" in again.stdout


@pytest.mark.slow
def test_readme_command_twice_at_once(tmp_path):
    """The README command typed twice at once on a new SQLite file.

    `mlflow run . --env-manager local ...` twice at the same moment on a brand-new file (MLflow opens the
    store in `mlflow run` itself, before the entry point): both finish, the store whole."""
    import os

    db = tmp_path / "store" / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    cmd = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "--env-manager", "local",
           "-e", "translate", "-P", "preset=offline",
           "-P", "limit=2"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    assert _problem(db) is None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    default = client.get_experiment("0")  # `mlflow run`'s own runs: beside the file as well
    assert default.artifact_location == f"{db.parent / 'mlruns'}/0"
    assert len(client.search_runs(["0"])) == 2 and not (tmp_path / "mlruns").exists()
