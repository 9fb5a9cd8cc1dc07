"""Entry points build what they need (distill.pipeline.upstream), through the real `mlflow run` on fresh stores: the
design card's line verbatim, typed again, `plan=true`, `upstream=false`, and `evaluate` of a student that
does not exist yet."""

import os
import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from distill.phases.contract import phase
from distill.phases.sft import SftParams
from distill.pipeline import steps
from distill.pipeline.targets import UpstreamParams
from distill.tracking import lineage
from tests.conftest import ROOT

DESIGN_CARD = ["-e", "sft", "--env-manager", "local", "-P", "teacher=7B"]
STUDENTS = ("qwen2.5-0.5b", "llm-jp-3.1-1.8b")  # the offline grid's


def mlflow_run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}  # as in an activated venv
    return subprocess.run([sys.executable, "-m", "mlflow", "run", str(ROOT), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)


def all_runs(tmp_path) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


def phase_runs(runs) -> list[str]:
    return sorted(r.data.tags[lineage.PHASE] for r in runs if lineage.PHASE in r.data.tags)


@pytest.mark.slow
def test_design_card_builds_then_reuses(tmp_path):
    """The design card's line builds everything then reuses it."""
    # plan=true on an empty store: the whole chain to run, and nothing run
    plan = mlflow_run(tmp_path, *DESIGN_CARD, "-P", "plan=true")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert plan.stdout.splitlines()[:2] == ["sft: 6 steps, 6 to run, 0 reused", "  run    translate"]
    [cli] = all_runs(tmp_path)  # only the run `mlflow run` opens before any entry point starts
    assert cli.data.tags[lineage.PLAN_ONLY] == "true" and "sft 7B -> llm-jp-3.1-1.8b (seed 42)" in \
        cli.data.tags["mlflow.note.content"]

    first = mlflow_run(tmp_path, *DESIGN_CARD)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = all_runs(tmp_path)
    assert phase_runs(runs) == ["select", "sft", "sft", "teacher", "teacher", "translate"]  # no evaluation
    [parent] = [r for r in runs if r.data.tags.get(lineage.ENTRY_POINT) == "sft"]
    assert parent.info.run_name == "sft-offline" and parent.info.status == "FINISHED"
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs if lineage.PHASE in r.data.tags)
    cli = next(r for r in runs if r.data.tags.get("mlflow.project.entryPoint") == "sft")
    assert cli.info.status == "FINISHED" and cli.data.tags[lineage.EXPERIMENT] == "distill-offline"
    assert cli.data.tags[lineage.CACHE_KEY] == parent.data.tags[lineage.CACHE_KEY]  # it beat with the parent
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for student in STUDENTS:  # every student of the grid, on the 7B teacher's data
        version = client.get_model_version_by_alias(f"offline-student-{student}", "teacher-7b")
        assert version.tags["teacher"] == "7B" and version.tags["seed"] == "42"

    again = mlflow_run(tmp_path, "-e", "sft", "--env-manager", "local", "-P", "teacher=7b")  # the same, forgiving name
    assert again.returncode == 0, again.stderr[-3000:]
    # the selection with the 7B teacher's set is there now: nothing upstream is missing, only the two cells asked
    assert again.stdout.splitlines()[0] == "sft: 2 steps, 0 to run, 2 reused"
    later = all_runs(tmp_path)
    assert phase_runs(later) == phase_runs(runs)  # no step ran again
    assert any(r.info.run_name == "sft-offline (reused 2 of 2 steps)" for r in later)


@pytest.mark.slow
def test_upstream_false_refuses_missing(tmp_path):
    """Upstream false refuses the missing input as before."""
    proc = mlflow_run(tmp_path, *DESIGN_CARD, "-P", "student=qwen2.5-0.5b", "-P", "upstream=false")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: no FINISHED select run has a training set for 7B; run `select` with those teachers "
                      "first or pass select_run=<id>"], proc.stderr[-3000:]
    assert phase_runs(all_runs(tmp_path)) == []


@pytest.mark.slow
def test_evaluate_untrained_trains_first(tmp_path):
    """Evaluate of a student not trained yet trains it first."""
    uri = "models:/offline-student-qwen2.5-0.5b@teacher-72b"
    proc = mlflow_run(tmp_path, "-e", "evaluate", "--env-manager", "local", "--experiment-name", "mine",
                      "-P", f"model={uri}", "-P", "limit=3", "-P", "max_new_tokens=4", "-P", "train_limit=8",
                      "-P", "n=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0] == "evaluate: 6 steps, 6 to run, 0 reused"
    runs = all_runs(tmp_path)
    assert phase_runs(runs) == ["evaluate", "select", "sft", "teacher", "teacher", "translate"]
    # under --experiment-name the run `mlflow run` opened is the one the steps nest under
    [cli] = [r for r in runs if r.data.tags.get("mlflow.project.entryPoint") == "evaluate"]
    assert cli.data.tags[lineage.ENTRY_POINT] == "evaluate"
    assert all(r.data.tags["mlflow.parentRunId"] == cli.info.run_id for r in runs if lineage.PHASE in r.data.tags)
    [evaluation] = [r for r in runs if r.data.tags.get(lineage.PHASE) == "evaluate"]
    [trained] = [r for r in runs if r.data.tags.get(lineage.PHASE) == "sft"]
    assert (evaluation.data.tags[lineage.SFT_RUN_ID] == trained.info.run_id
            and trained.data.tags[lineage.TEACHER] == "72B")
    assert evaluation.data.metrics["n_total"] == 3
    # its own max_new_tokens is the evaluation's: the teachers generated the preset's 32 tokens
    assert {r.data.params["max_new_tokens"] for r in runs if r.data.tags.get(lineage.PHASE) == "teacher"} == {"32"}


@pytest.mark.slow
def test_model_steps_in_own_processes(tracking, monkeypatch):
    """The upstream steps that load a model run in processes of their own.

    What `main` does (distill.pipeline.steps): translate, each teacher and every sft go to a process of their own,
    select runs here; all of them nested under the entry point's run."""
    import importlib

    from distill.pipeline import upstream
    from distill.tracking import phase_runs as phase_tracking

    handed = []

    def in_a_process(ctx, module, params, parent_run_id, fresh_inputs=False, cuda_visible_devices=None):
        handed.append((module, cuda_visible_devices))  # then the step, as its process would run it
        phase_tracking.FRESH_INPUTS = fresh_inputs
        try:
            return importlib.import_module(module).run(params)
        finally:
            phase_tracking.FRESH_INPUTS = False

    monkeypatch.setattr(steps, "run_in_process", in_a_process)
    last = upstream.run(phase("sft"), SftParams(teacher="7B", student="qwen2.5-0.5b", num_train_epochs=1),
                        UpstreamParams(train_limit=8, n=4, max_new_tokens=4))
    assert [m for m, _ in handed] == ["distill.phases.translate", "distill.phases.teacher", "distill.phases.teacher",
                                      "distill.phases.sft"]
    assert {gpus for _, gpus in handed} == {""}  # the offline preset's steps see no GPU
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    [parent] = [r for r in runs if r.data.tags.get(lineage.ENTRY_POINT) == "sft"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs if lineage.PHASE in r.data.tags)
    assert mlflow.get_run(last).data.tags[lineage.PHASE] == "sft"


def test_bad_target_setting_stops_first(tracking, capsys):
    """A bad setting of the target stops it before its upstream runs."""
    from distill import DistillError
    from distill.phases.evaluate import EvaluateParams
    from distill.pipeline import upstream

    with pytest.raises(DistillError, match="unknown batching 'foo'"):
        upstream.run(phase("sft"), SftParams(teacher="7B", batching="foo"), UpstreamParams())
    with pytest.raises(DistillError, match="unknown mode 'two-shot'"):
        upstream.run(phase("evaluate"), EvaluateParams(model="models:/offline-student-qwen2.5-0.5b@teacher-7b",
                                                          mode="two-shot"), UpstreamParams())
    assert (mlflow.search_runs(search_all_experiments=True, output_format="list") == []
            and capsys.readouterr().out == "")


@pytest.mark.slow
def test_select_uses_users_runs(tmp_path):
    """Select uses the user's translation and teacher run and builds only the missing teacher.

    The issue's sequence: `translate limit=16`, `teacher 7B`, then `select` (the grid's teachers: 7B and 72B)
    runs only 72B, on the user's 16 questions; `plan=true` says so first. `main` does not take the limited
    translation for the preset's full data: it builds its own."""
    from distill.pipeline import MainParams, planner
    from tests.conftest import run_entry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    run_entry("translate", "--preset", "offline", "--limit", "16", env=env, cwd=tmp_path)
    run_entry("teacher", "--teacher", "7B", env=env, cwd=tmp_path)
    [translation] = [r for r in all_runs(tmp_path) if r.data.tags.get(lineage.PHASE) == "translate"]
    [seven] = [r for r in all_runs(tmp_path) if r.data.tags.get(lineage.PHASE) == "teacher"]
    tid, sid = translation.info.run_id, seven.info.run_id

    # the preset's n=32 of 16 questions cannot succeed: said before 72B runs, not after
    refused = run_entry("select_questions", env=env, cwd=tmp_path, check=False)
    assert refused.returncode == 2 and refused.stderr.splitlines()[-1] == (
        f"error: n=32 questions to select, but your translation run {tid} has only 16: pass n=16 or fewer "
        "(or allow_fewer=true), or train_limit=<N> to build a translation of N questions"), refused.stderr[-3000:]
    assert phase_runs(all_runs(tmp_path)) == ["teacher", "translate"]

    plan = run_entry("select_questions", "--plan", "true", "--n", "8", env=env, cwd=tmp_path)
    assert plan.stdout.splitlines() == ["select: 4 steps, 2 to run, 2 reused",
                                        f"  reuse  translate    {tid}", f"  reuse  teacher 7B   {sid}",
                                        "  run    teacher 72B", "  run    select"]
    assert f"select: using your translation run {tid} (16 questions) from " in plan.stderr
    assert f"select: using your teacher 7B run {sid} from " in plan.stderr
    assert phase_runs(all_runs(tmp_path)) == ["teacher", "translate"]  # the plan ran nothing

    proc = run_entry("select_questions", "--n", "8", env=env, cwd=tmp_path)
    runs = all_runs(tmp_path)
    assert phase_runs(runs) == ["select", "teacher", "teacher", "translate"], proc.stderr[-3000:]
    [chosen] = [r for r in runs if r.data.tags.get(lineage.PHASE) == "select"]
    [seventy_two] = [r for r in runs if r.data.tags.get(lineage.TEACHER) == "72B"]
    assert chosen.info.status == "FINISHED" and seventy_two.data.tags[lineage.TRANSLATION_RUN_ID] == tid
    assert lineage.teacher_run_ids(chosen) == {"7B": sid, "72B": seventy_two.info.run_id}
    assert seventy_two.data.metrics["n_total"] == 16
    # asked for that translation's size (`train_limit=16`), the grid's own translate and teacher steps are the same
    # work as the user's runs (their keys less the code, which the other helpers' edits may change under a test)
    from distill.config.presets import load_preset
    from distill.phases import teacher, translate
    from distill.phases.select import SelectParams
    from distill.pipeline.targets import UpstreamParams, build
    from distill.tracking.cache_keys import work_key

    offline = load_preset("offline")
    asked = {s.name: s for s in build("select", SelectParams(n=8), UpstreamParams(train_limit=16)).steps}
    assert work_key("translate", translate.reuse_key(asked["translate"].params, offline)) == \
        translation.data.tags[lineage.WORK_KEY]
    assert work_key("teacher", teacher.reuse_key(asked["teacher 7B"].filled({"translate": tid}), offline),
                    {"translation_run_id": tid}) == seven.data.tags[lineage.WORK_KEY]

    # `main` (the preset's full data: 64 questions) does not fit the 16: it translates anew, and its teachers too
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        mlflow.set_tracking_uri(uri)
        p = MainParams(preset="offline")
        status = planner.pending(planner.plan(p, planner.resolve_grid(p)), planner.finished_run)
        todo = {x.step.name for x in status if x.reuse is None}
        assert {"translate", "teacher 7B", "teacher 72B", "select"} <= todo
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(None)
