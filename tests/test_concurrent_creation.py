"""Workers started at the same instant on empty storage all succeed: sweep workers creating one Optuna
storage, phases creating one MLflow tracking store (a `postgresql://` tracking URI opened directly), on
fresh PostgreSQL databases, several rounds. Without distill.tracking.schema_lock all but one worker of a round
died with `UniqueViolation ... (studydirection, 2200) already exists` (or `experiments`, `alembic_version`)."""

import json
import subprocess
import sys

import optuna
import pytest

from tests.conftest import ROOT

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


def test_sweep_workers_started_together_on_empty_storage_share_one_study(postgres, started_together):
    rounds = started_together["optuna"]
    assert [workers for _, workers in rounds] == [["ok"] * WORKERS] * len(rounds), rounds
    for url, _ in rounds:
        trials = optuna.load_study(study_name="concurrent", storage=url).trials
        assert sorted(t.value for t in trials) == list(range(WORKERS)), url  # one study, every worker's trial
        if url.startswith("postgresql"):
            db = url.rsplit("/", 1)[1]
            assert postgres.query(db, "SELECT count(*) FROM version_info")[0][0] == 1
            assert postgres.query(db, "SELECT count(*) FROM alembic_version")[0][0] == 1


def test_phases_started_together_on_an_empty_postgresql_tracking_store_all_write(postgres, started_together):
    rounds = started_together["mlflow"]
    assert [workers for _, workers in rounds] == [["ok"] * WORKERS] * ROUNDS, rounds
    for url, _ in rounds:
        db = url.rsplit("/", 1)[1]
        assert postgres.query(db, "SELECT count(*) FROM experiments WHERE name = 'distill-offline'")[0][0] == 1
        assert postgres.query(db, "SELECT count(*) FROM runs r JOIN experiments e USING (experiment_id) "
                                  "WHERE e.name = 'distill-offline' AND r.status = 'FINISHED'")[0][0] == WORKERS
        assert postgres.query(db, "SELECT count(*) FROM alembic_version")[0][0] == 1
