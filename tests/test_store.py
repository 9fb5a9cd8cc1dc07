"""The store's URIs without a server: a PostgreSQL that cannot be reached is one line within seconds, a
password written into a URI is never shown, and `sweep` refuses a storage URL that holds one (`mlflow run`
would log it as a param)."""

import time
from pathlib import Path

import mlflow
import pytest

from distill import DistillError
from distill.tracking import store
from distill.tracking.redact import redact_uri
from tests.conftest import free_port


@pytest.mark.parametrize("uri, shown", [
    ("postgresql://team:s3cret@db:5432/mlflow", "postgresql://team:***@db:5432/mlflow"),
    ("postgresql+psycopg://team:s3cret@db/optuna?sslmode=require", "postgresql+psycopg://team:***@db/optuna?sslmode=require"),
    ("http://alice:s3cret@mlflow-host:5000", "http://alice:***@mlflow-host:5000"),
    ("postgresql://team@db/mlflow", "postgresql://team@db/mlflow"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
])
def test_uri_password_as_stars(uri, shown):
    """A password in a URI is shown as stars."""
    assert redact_uri(uri) == shown


def test_unreachable_postgresql_one_line(monkeypatch, tmp_path):
    """A PostgreSQL tracking store that cannot be reached is one line without its password."""
    uri = f"postgresql://team:s3cret-pw@127.0.0.1:{free_port()}/mlflow"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    try:
        t0 = time.perf_counter()
        with pytest.raises(DistillError) as e:
            store.ensure_tracking_store()
        assert time.perf_counter() - t0 < 15  # MLflow's own engine retries take minutes
    finally:
        mlflow.set_tracking_uri(None)
    message = str(e.value)
    assert message.startswith("cannot reach the PostgreSQL database postgresql://team:***@127.0.0.1:")
    assert "s3cret-pw" not in message and "\n" not in message


def test_sweep_refuses_storage_password(tracking, tmp_path, cli):
    """Sweep refuses a storage with a password before anything is written."""
    done = cli("sweep", "--teacher", "7B", "--student", "qwen2.5-0.5b",
               "--storage", "postgresql://optuna:s3cret-pw@db:5432/optuna")
    err = done.stderr
    assert done.returncode == 2 and err.startswith("error: storage holds a password (postgresql://optuna:***@db:5432/optuna)")
    assert "PGPASSWORD" in err and "s3cret-pw" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()  # refused before the tracking store was even made


def _bad_tracking_uri(kind: str, tmp_path) -> str:
    (tmp_path / "afile").write_text("not a folder")
    return {"proc": "sqlite:////proc/nope/mlflow.db",
            "under_a_file": f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}",
            "unknown_scheme": "foo://bar",
            "folder_store": str(tmp_path / "runs")}[kind]


def _refused_in_one_line(code: int, stderr: str, uri: str, tmp_path) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and uri in lines[0], lines
    assert "Traceback" not in stderr
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("kind", ["proc", "under_a_file", "unknown_scheme", "folder_store"])
def test_bad_tracking_uri_refused(kind, tmp_path, monkeypatch, cli):
    """A bad tracking URI is refused by name in one line before any work.

    In this process (the refusal, not the interpreter, is tested); the next test types one as a user would."""
    uri = _bad_tracking_uri(kind, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    try:
        done = cli("translate", "--preset", "offline", "--limit", "2")
    finally:
        mlflow.set_tracking_uri(None)
    _refused_in_one_line(done.returncode, done.stderr, uri, tmp_path)


@pytest.mark.slow
def test_bad_tracking_uri_fresh_process(tmp_path):
    """A bad tracking URI is refused in a fresh process."""
    from tests.conftest import run_entry

    uri = _bad_tracking_uri("under_a_file", tmp_path)
    proc = run_entry("translate", "--preset", "offline", "--limit", "2", cwd=tmp_path,
                     env={"MLFLOW_TRACKING_URI": uri}, check=False)
    _refused_in_one_line(proc.returncode, proc.stderr, uri, tmp_path)


@pytest.mark.slow
def test_artifacts_beside_sqlite_file(tmp_path):
    """A SQLite store keeps its artifacts beside the database file not where the command runs.

    The preset's experiment (and MLflow's Default) are created with their artifacts in `mlruns` beside the
    database file, whatever the folder a command runs in: a store in /data/mlflow.db keeps them in /data."""
    from mlflow.tracking import MlflowClient

    from tests.conftest import run_entry

    store, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    run_entry("translate", "--preset", "offline", "--limit", "2", cwd=work, env={"MLFLOW_TRACKING_URI": uri})
    client = MlflowClient(uri)
    exps = {e.name: e for e in client.search_experiments()}
    root = str(store / "mlruns")
    for name in ("Default", "distill-offline"):
        assert exps[name].artifact_location == f"{root}/{exps[name].experiment_id}", exps[name]
    run = client.search_runs([exps["distill-offline"].experiment_id])[0]
    assert run.info.artifact_uri.startswith(f"{root}/") or run.info.artifact_uri.startswith(f"file://{root}/")
    assert (client.list_artifacts(run.info.run_id)
            and (store / "mlruns" / exps["distill-offline"].experiment_id).is_dir())
    assert (not (work / "mlruns").exists()
            and not (Path.cwd() / "mlruns" / exps["distill-offline"].experiment_id / run.info.run_id).exists())


@pytest.mark.slow
def test_moved_sqlite_store_keeps_artifacts(tmp_path):
    """A SQLite store moved with its artifacts keeps them after one command.

    MLflow writes absolute locations: a copied store points at the old folder until
    `python -m distill.tracking.sqlite_move OLD sqlite:///NEW/mlflow.db` rewrites them."""
    import shutil
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from tests.conftest import ROOT, run_entry

    old, new, work = tmp_path / "old", tmp_path / "new", tmp_path / "work"
    work.mkdir()
    run_entry("translate", "--preset", "offline", "--limit", "2", cwd=work,
              env={"MLFLOW_TRACKING_URI": f"sqlite:///{old / 'mlflow.db'}"})
    shutil.copytree(old, new)
    shutil.rmtree(old)
    uri = f"sqlite:///{new / 'mlflow.db'}"
    proc = subprocess.run([sys.executable, "-m", "distill.tracking.sqlite_move", str(old), uri],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and f"now under {new}" in proc.stdout, proc.stderr
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("distill-offline")
    assert exp.artifact_location == f"{new / 'mlruns'}/{exp.experiment_id}"
    run = client.search_runs([exp.experiment_id])[0]
    assert str(old) not in run.info.artifact_uri
    got = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "got")))
    assert [p for p in got.rglob("*") if p.is_file()]
