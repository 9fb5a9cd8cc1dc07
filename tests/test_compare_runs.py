"""tools/compare_runs.py: two stores of the same work agree although every run id differs; a changed metric,
param or tag is named."""

import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from compare_runs import compare  # noqa: E402


def _store(root: Path, accuracy: float, port: int) -> str:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("distill-offline", artifact_location=str(root / "artifacts"))
    sft = client.create_run(exp, run_name="sft-7B", tags={"distill.phase": "sft", "distill.heartbeat": str(port)})
    client.log_param(sft.info.run_id, "seed", "42")
    client.set_terminated(sft.info.run_id)
    ev = client.create_run(exp, run_name="evaluate-7B", tags={"distill.phase": "evaluate",
                                                              "distill.sft_run_id": sft.info.run_id})
    client.log_param(ev.info.run_id, "base_url", f"http://127.0.0.1:{port}/v1")
    client.log_metric(ev.info.run_id, "accuracy", accuracy)
    client.log_metric(ev.info.run_id, "generation_seconds", port / 100)
    client.set_terminated(ev.info.run_id)
    # the run `mlflow run` opens: a name MLflow draws, the process id of this try
    cli = client.create_run("0", run_name=f"random-name-{port}", tags={"mlflow.project.entryPoint": "main",
                                                                       "distill.pid": str(port)})
    client.set_terminated(cli.info.run_id)
    return uri


def test_changed_metric_is_named(tmp_path):
    """The same work agrees, and a changed metric is named."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    a = _store(tmp_path / "a", 50.0, 8791)
    b = _store(tmp_path / "b", 50.0, 8792)  # other run ids, port, timing and heartbeat: the same work
    c = _store(tmp_path / "c", 37.5, 8793)
    assert compare(a, b) == ["runs: 3 and 3"]
    assert compare(a, c)[1:] == ["('distill-offline', 'evaluate-7B', 'evaluate', ''): metric accuracy: 50.0 != 37.5"]
