"""Where an MLflow student's files come from when a backend or the trainer loads it
(distill.config.models.materialize).

Every evaluation used to download the whole student into a fresh temporary folder that nobody removed: two
evaluations, two copies in $TMPDIR. A local store's student is read where it is; a server's is downloaded once
into distill_home()/models and reused; nothing is left in $TMPDIR either way.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import mlflow
import pytest

from distill.config.models import ModelRef, materialize


@contextlib.contextmanager
def temp_folder_watched(folder: Path):
    """$TMPDIR and tempfile's own default at `folder` (empty) while the block runs; what was left there after."""
    folder.mkdir()
    old_env, old_default = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(folder), str(folder)
    left: list[str] = []
    try:
        yield left
    finally:
        tempfile.tempdir = old_default
        if old_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_env
        left += sorted(p.name for p in folder.iterdir())


def log_student(folder: Path) -> str:
    """A student as the transformers flavour lays it out under `model`: weights in model/, tokenizer in
    components/tokenizer; the run's id."""
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), "model/model")
        mlflow.log_artifacts(str(folder), "model/components/tokenizer")
    return run.info.run_id


def log_logged_model(folder: Path, name: str) -> tuple[str, str]:
    """The same as MLflow 3's log_model(name=...) keeps it: a logged model of the run, its files apart from the
    run's artifacts; the run's id and the model's id."""
    with mlflow.start_run() as run:
        model = mlflow.initialize_logged_model(name=name, source_run_id=run.info.run_id)
        staged = Path(mlflow.get_artifact_uri()).parent / "staged"  # the run's own folder, not the shared one
        shutil.copytree(folder, staged / "model")
        shutil.copytree(folder, staged / "components" / "tokenizer")
        mlflow.MlflowClient().log_model_artifacts(model.model_id, str(staged))
        shutil.rmtree(staged)
        mlflow.finalize_logged_model(model.model_id, "READY")
    return run.info.run_id, model.model_id


@pytest.fixture
def home(tmp_path, monkeypatch, tiny_student):  # tiny_student first: it is built under the session's home
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return tmp_path / "home"


def test_local_store_student_read_in_place(tracking, home, tiny_student, tmp_path):
    """A local store's student is read in place, and nothing is copied."""
    run_id = log_student(tiny_student)
    artifacts = Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://")).resolve()
    ref = ModelRef("student", f"runs:/{run_id}/model")
    with temp_folder_watched(tmp_path / "tmp") as left:
        first, second = materialize(ref), materialize(ref)
    assert left == []
    assert first == second and Path(first.model) == artifacts / "model" / "model"
    assert Path(first.tokenizer) == artifacts / "model" / "components" / "tokenizer"
    assert not (home / "models").exists()


def test_logged_or_registered_read_in_place(tracking, home, tiny_student, tmp_path):
    """A local logged or registered student is read in place.

    MLflow 3's logged model (runs:/<run>/<name> finds it) and a registered version by alias and by number."""
    run_id, model_id = log_logged_model(tiny_student, "student-x")
    version = mlflow.register_model(f"models:/{model_id}", "student-x").version
    mlflow.MlflowClient().set_registered_model_alias("student-x", "best", version)
    folder = Path(mlflow.MlflowClient().get_logged_model(model_id).artifact_location).resolve()
    with temp_folder_watched(tmp_path / "tmp") as left:
        found = [materialize(ModelRef("s", uri)) for uri in (f"runs:/{run_id}/student-x", "models:/student-x@best",
                                                              f"models:/student-x/{version}", f"models:/{model_id}")]
    assert left == []
    assert {Path(f.model) for f in found} == {folder / "model"}
    assert {Path(f.tokenizer) for f in found} == {folder / "components" / "tokenizer"}
    assert not (home / "models").exists()


@pytest.fixture
def on_server(mlflow_server, monkeypatch, tmp_path):
    """This process's MLflow at the real `mlflow server` (proxied artifacts: mlflow-artifacts:/ URIs), in an
    experiment of the test's own."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")  # set_experiment sets it: restored (unset) after the test
    mlflow.set_tracking_uri(mlflow_server)
    experiment = mlflow.set_experiment(f"models-cache-{tmp_path.name}")
    yield mlflow_server
    while mlflow.active_run():
        mlflow.end_run()
    if mlflow.tracking.fluent._active_experiment_id == experiment.experiment_id:  # MLflow's process-wide choice
        mlflow.tracking.fluent._active_experiment_id = None
    mlflow.set_tracking_uri(None)


def test_server_student_downloaded_once(on_server, home, tiny_student, tmp_path, monkeypatch):
    """A server's student is downloaded once into the cache."""
    run_id = log_student(tiny_student)
    assert mlflow.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    ref = ModelRef("student", f"runs:/{run_id}/model")
    with temp_folder_watched(tmp_path / "tmp") as left:
        first = materialize(ref)
        monkeypatch.setattr(mlflow.artifacts, "download_artifacts", lambda *a, **k: pytest.fail("downloaded again"))
        second = materialize(ref)
    assert left == []
    assert first == second
    cached = sorted(p.name for p in (home / "models").iterdir())
    assert len(cached) == 1 and Path(first.model) == home / "models" / cached[0] / "model"
    assert Path(first.tokenizer) == home / "models" / cached[0] / "components" / "tokenizer"
    assert (Path(first.model) / "config.json").read_bytes() == (tiny_student / "config.json").read_bytes()


def test_moved_alias_and_lost_race(
        on_server, home, tiny_student, tmp_path, monkeypatch):
    """A moved alias is another cached model, and a lost race keeps the winner's copy.

    Two processes fetch one model at once: the one whose rename loses uses the other's copy, and leaves no
    partial download behind. An alias moved to another version is fetched anew, not taken from the cache."""
    client = mlflow.MlflowClient()
    name = f"student-{tmp_path.name}"
    client.create_registered_model(name)
    versions = []
    for _ in range(2):
        run = mlflow.get_run(log_student(tiny_student))
        versions.append(client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id).version)
    client.set_registered_model_alias(name, "best", versions[0])
    ref = ModelRef("student", f"models:/{name}@best")
    real, raced, winner = mlflow.artifacts.download_artifacts, [], []

    def racing(*args, **kwargs):
        got = real(*args, **kwargs)
        if not raced:  # another process finishes the same download first
            raced.append(True)
            winner.append(materialize(ref))
        return got

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", racing)
    with temp_folder_watched(tmp_path / "tmp") as left:
        first = materialize(ref)
        client.set_registered_model_alias(name, "best", versions[1])
        moved = materialize(ref)
    assert left == []
    assert first == winner[0] and moved.model != first.model
    assert len(list((home / "models").iterdir())) == 2  # one folder a version, no .part left
