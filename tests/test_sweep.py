"""sweep: Optuna over SFT hyperparameters, scored on the dev split, each trial a nested run."""

import mlflow
import optuna
import pytest

from distill import DistillError
from distill.phases.sweep import SweepParams, run as sweep
from tests.mini_study import Sizes

MINI_STUDY = Sizes(limit=14, max_new_tokens=12, n=8, dev_size=4)  # conftest's mini_study, built once for the module


@pytest.fixture
def selected(mini_study):
    return mini_study["select"]


def test_trials_nested_with_plots(selected, tmp_path):
    """Sweep runs trials as nested runs and logs plots."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    run_id = sweep(SweepParams(teacher="7B", student="qwen2.5-0.5b", n_trials=3, storage=storage, max_new_tokens=6,
                               space="learning_rate,num_train_epochs"))
    run = mlflow.get_run(run_id)
    assert run.data.tags["distill.select_run_id"] == selected
    assert {"best_learning_rate", "best_num_train_epochs"} <= set(run.data.params)
    trials = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{run_id}'", output_format="list")
    assert len(trials) == 3 and all(t.data.tags["distill.phase"] == "sweep-trial" for t in trials)
    assert all("learning_rate" in t.data.params for t in trials)
    assert all("dev_accuracy" in t.data.metrics for t in trials)
    plots = {a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="plots")}
    assert "plots/optimization_history.html" in plots
    study = optuna.load_study(study_name="sft-offline-7B-qwen2.5-0.5b", storage=storage)
    assert len(study.trials) == 3  # the study is in the database: another worker could join it


@pytest.mark.parametrize("params,message", [
    (dict(n_trials=0), "n_trials must be an integer >= 1"),
    (dict(space=""), "empty search space"),
    (dict(space="dropout"), "sweep's space has an unknown key 'dropout'"),
])
def test_bad_sweep_input_stops_at_once(selected, params, message, tmp_path):
    with pytest.raises(DistillError, match=message):
        sweep(SweepParams(teacher="7B", student="qwen2.5-0.5b", storage=f"sqlite:///{tmp_path / 's.db'}", **params))
