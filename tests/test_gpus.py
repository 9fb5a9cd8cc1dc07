"""Each step process of the sequential `main` sees exactly the GPUs its step needs (CUDA_VISIBLE_DEVICES),
chosen from those `main` itself sees; a step that needs more is refused before the grid starts. No GPU here:
the count torch would report is faked at its one seam (distill.pipeline.gpus.device_count); the child's environment
is real."""

import multiprocessing

import mlflow
import pytest

from distill import DistillError, pipeline
from distill.pipeline import MainParams, gpus
from tests import step_fixtures
from tests.step_fixtures import FixtureParams


@pytest.fixture
def steps_seeing(tracking, monkeypatch):  # noqa: F811 - conftest's tracking store
    """Steps of a `main` on a machine whose torch counts `n` GPUs, with CUDA_VISIBLE_DEVICES as given."""
    monkeypatch.setattr(pipeline, "ISOLATED", pipeline.ISOLATED | {"tests.step_fixtures"})
    ctx = multiprocessing.get_context("fork")
    mains = []

    def make(n: int, cuda_visible_devices: str | None = None):
        monkeypatch.setattr(gpus, "device_count", lambda: n)
        if cuda_visible_devices is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cuda_visible_devices)
        mains.append(mlflow.start_run(run_name="main", nested=bool(mains)))
        return pipeline.Steps(ctx, mains[-1].info.run_id, gpus.visible())

    yield make
    while mlflow.active_run():
        mlflow.end_run()


def _seen(step, need: int) -> str:
    run_id = step(f"needs {need}", step_fixtures.run, FixtureParams(), gpus=need)
    return mlflow.get_run(run_id).data.params["cuda_visible_devices"]


def test_step_sees_only_its_gpus(steps_seeing):
    """A step process sees only the GPUs its step needs."""
    step = steps_seeing(4)
    # SFT and transformers generation: one GPU, so Trainer does not wrap the student in nn.DataParallel
    assert _seen(step, 1) == "'0'"
    assert _seen(step, 2) == "'0,1'"   # vLLM at tensor parallel 2
    assert _seen(step, 0) == "''"      # select, tokens, served generation: none
    assert [s["gpus"] for s in step.log] == [1, 2, 0]


def test_gpus_handed_out_are_mains(steps_seeing):
    """The GPUs handed out are those main was given."""
    step = steps_seeing(2, "3,5")  # a scheduler gave `main` GPUs 3 and 5 of the node
    assert _seen(step, 1) == "'3'" and _seen(step, 2) == "'3,5'"


def test_step_needing_more_gpus_refused(tracking, monkeypatch):
    """A step that needs more GPUs than main sees is refused before the grid starts."""
    monkeypatch.setattr(gpus, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(DistillError, match=r"^step translate needs 4 GPUs and this machine shows 2 "
                                           r"\(CUDA_VISIBLE_DEVICES=0,1\); "):
        pipeline.run(MainParams(preset="paper"))   # the 70B translator at tensor parallel 4
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
    monkeypatch.setattr(gpus, "device_count", lambda: 0)
    with pytest.raises(DistillError, match="preset 'paper' needs a GPU"):
        pipeline.run(MainParams(preset="paper"))


def test_visible_gpus_unset_or_too_many(monkeypatch):
    """Visible GPUs without `CUDA_VISIBLE_DEVICES`, and with more entries than GPUs."""
    monkeypatch.setattr(gpus, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpus.visible() == ["0", "1", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aa,GPU-bb,GPU-cc,GPU-dd")  # torch counts the ones that exist
    assert gpus.visible() == ["GPU-aa", "GPU-bb", "GPU-cc"]
    monkeypatch.setattr(gpus, "device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpus.visible() == [] and gpus.for_step(0, []) == ""
