"""keep_checkpoints=last: a run keeps only its newest complete checkpoint, in the local file store and through
a real `mlflow server`'s proxied artifact store (`mlflow-artifacts:`, deleted over HTTP)."""

from types import SimpleNamespace

import mlflow
import pytest

from distill import DistillError
from distill.training.callbacks import MlflowLogger, PaddingCounter
from distill.training.checkpoints import UPLOAD_COMPLETE, check_keep, remove, uploaded


def save(output_dir, step):
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 1000)
    (folder / "trainer_state.json").write_text("{}")


def on_save(logger, output_dir, step):
    save(output_dir, step)
    logger.on_save(SimpleNamespace(output_dir=str(output_dir)), SimpleNamespace(global_step=step,
                                                                            is_world_process_zero=True), None)


@pytest.fixture(params=["file store", "mlflow server"])
def store(request, tmp_path, tmp_path_factory, monkeypatch):
    """The run's artifacts in a local folder (sqlite + ./mlruns), or behind `mlflow server --artifacts-destination`
    (the session's server, tests/conftest.py); yields the folders the artifacts land in on disk."""
    if request.param == "file store":
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        monkeypatch.chdir(tmp_path)
        roots = [tmp_path / "mlruns"]
    else:
        uri = request.getfixturevalue("mlflow_server")
        roots = [d / "artifacts" for d in tmp_path_factory.getbasetemp().glob("mlflow-server[0-9]*")]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")  # set_experiment sets it: restored (unset) after the test
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(f"retention-{tmp_path.name}")
    yield SimpleNamespace(kind=request.param, roots=roots)
    while mlflow.active_run():
        mlflow.end_run()
    if mlflow.tracking.fluent._active_experiment_id == experiment.experiment_id:  # MLflow's process-wide choice
        mlflow.tracking.fluent._active_experiment_id = None
    mlflow.set_tracking_uri(None)


def test_newest_complete_checkpoint_stays(store, tmp_path):
    """Only the newest complete checkpoint stays."""
    with mlflow.start_run() as killed:  # an earlier try that uploaded a checkpoint, then died
        on_save(MlflowLogger(PaddingCounter(None, 0), keep="all"), tmp_path / "killed", 2)
    assert uploaded(killed.info.run_id) == ["checkpoints/checkpoint-2"]
    with mlflow.start_run() as run:
        logger = MlflowLogger(PaddingCounter(None, 0), keep="last", earlier=(killed.info.run_id,))
        if store.kind == "mlflow server":
            assert run.info.artifact_uri.startswith("mlflow-artifacts:")

        def on_disk(step):  # not only gone from the listing: the files are deleted
            return [p for root in store.roots
                    for p in root.glob(f"*/{run.info.run_id}/artifacts/checkpoints/checkpoint-{step}")]

        on_save(logger, tmp_path / "out", 4)
        assert on_disk(4)
        assert uploaded(run.info.run_id) == ["checkpoints/checkpoint-4"]
        assert uploaded(killed.info.run_id) == []  # the earlier try's are older than this run's first
        on_save(logger, tmp_path / "out", 8)
        assert uploaded(run.info.run_id) == ["checkpoints/checkpoint-8"] and not on_disk(4) and on_disk(8)
        files = {a.path.rsplit("/", 1)[-1] for a in mlflow.artifacts.list_artifacts(
            run_id=run.info.run_id, artifact_path="checkpoints/checkpoint-8")}
        assert files == {"model.safetensors", "trainer_state.json", UPLOAD_COMPLETE}
        assert remove(run.info.run_id) == []  # once the model is logged
        assert uploaded(run.info.run_id) == [] and not on_disk(8)


def test_keep_checkpoints_is_validated():
    assert check_keep("last") == "last" and check_keep("all") == "all"
    with pytest.raises(DistillError, match="keep_checkpoints must be one of last, all \\(got 'none'\\)"):
        check_keep("none")
