"""Steps of `main` in processes of their own: the run nests under the main run, a result or an error comes
back, and a step that dies is named with the run it had started."""

import multiprocessing
import os

import mlflow
import pytest

from distill import DistillError, tracking
from distill.phases import main as pipeline
from tests import step_fixtures
from tests.step_fixtures import FixtureParams


@pytest.fixture
def steps(tracking, monkeypatch):  # noqa: F811 - conftest's tracking store
    monkeypatch.setattr(pipeline, "ISOLATED", pipeline.ISOLATED | {"tests.step_fixtures"})
    ctx = multiprocessing.get_context("fork")
    with mlflow.start_run(run_name="main") as main:
        yield pipeline.Steps(ctx, main.info.run_id), main.info.run_id


def test_a_step_runs_in_its_own_process_nested_under_main(steps):
    step, main_id = steps
    run_id = step("fixture", step_fixtures.run, FixtureParams())
    run = mlflow.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == main_id and run.info.status == "FINISHED"
    assert int(run.data.params["pid"]) != os.getpid()
    assert step.log[-1]["run_id"] == run_id and not step.log[-1]["reused"]


@pytest.mark.parametrize("how,message", [
    ("die", "its process ended (exit code 9) before the step finished"),
    ("raise", "ValueError: boom"),
    ("refuse", "n must be > 0 (got 0)"),
])
def test_a_failed_step_is_named_with_its_run(steps, how, message):
    step, _ = steps
    started = []
    with pytest.raises(DistillError) as e, tracking.on_phase_run(started.append):
        step("fixture", step_fixtures.run, FixtureParams(how=how))
    assert len(started) == 1  # reported by the child as it started, before it died
    assert str(e.value) == (f"step fixture failed (run {started[0].run_id}): {message}; type the same command again "
                            "to continue from there")
    status = mlflow.get_run(started[0].run_id).info.status
    assert status == ("RUNNING" if how == "die" else "FAILED")  # a killed run stays unfinished: resumable
