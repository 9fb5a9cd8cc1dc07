"""What each entry point builds (distill.pipeline.targets): its targets, what they need, and that those are `main`'s
own steps, so that whichever runs first, the other reuses it."""

import dataclasses

import pytest

from distill import DistillError
from distill.cli import parse_params, upstream_params
from distill.phases.evaluate import EvaluateParams
from distill.phases.report import ReportParams
from distill.phases.select import SelectParams
from distill.phases.sft import SftParams
from distill.phases.teacher import TeacherParams
from distill.phases.tokens import TokensParams
from distill.pipeline import MainParams, planner
from distill.pipeline.targets import UpstreamParams, build

UP = UpstreamParams()
SELECTION = ["translate", "teacher 7B", "teacher 72B", "select"]


def names(found) -> list[str]:
    return [s.name for s in found.steps]


def mains_steps(**grid) -> dict[str, planner.Step]:
    p = MainParams(preset="offline", **grid)
    return {s.name: s for s in planner.plan(p, planner.resolve_grid(p))}


def test_sft_trains_grid_after_selection():
    """sft trains every student and seed of the grid on the teacher after what selection needs."""
    found = build("sft", SftParams(teacher="7b"), UP)  # a forgiving name: the preset's 7B from here on
    cells = ["sft 7B -> qwen2.5-0.5b (seed 42)", "sft 7B -> llm-jp-3.1-1.8b (seed 42)"]
    assert [t.name for t in found.targets] == cells and names(found) == SELECTION + cells
    assert all(t.params.teacher == "7B" and t.inputs == {"select_run": ["select"]} for t in found.targets)
    # not an evaluation, a baseline, tokens or report: nothing it was not asked for
    assert {s.phase for s in found.steps} == {"translate", "teacher", "select", "sft"}


def test_sft_builds_mains_steps():
    """sft builds main's own steps with its own parameters on the target."""
    found = build("sft", SftParams(teacher="7B", student="qwen2.5-0.5b", learning_rate=1e-4),
                  UpstreamParams(train_limit=16, n=12))
    main = mains_steps(students=["qwen2.5-0.5b"], train_limit=16, n=12)
    *upstream, target = found.steps
    assert [(s.name, s.params, s.inputs, s.gpus) for s in upstream] == \
           [(s.name, main[s.name].params, main[s.name].inputs, main[s.name].gpus) for s in upstream]
    assert target.params == dataclasses.replace(main[target.name].params, learning_rate=1e-4, reuse=True)


def test_sft_narrowed_mixed_or_given():
    """sft narrowed mixed or given its data."""
    found = build("sft", SftParams(teacher="7B", student="QWEN2.5-0.5B", seed=3), UP)
    assert [t.name for t in found.targets] == ["sft 7B -> qwen2.5-0.5b (seed 3)"]
    # a teacher outside the grid joins the selection; a mix needs both of its teachers
    assert names(build("sft", SftParams(teacher="14B", student="qwen2.5-0.5b"), UP))[:5] == \
           ["translate", "teacher 7B", "teacher 14B", "teacher 72B", "select"]
    mix = build("sft", SftParams(teacher="7b+72b", student="qwen2.5-0.5b"), UpstreamParams(teachers=["7B", "32B"]))
    assert names(mix) == ["translate", "teacher 7B", "teacher 32B", "teacher 72B", "select",
                          "sft 7B+72B -> qwen2.5-0.5b (seed 42)"]
    # every input given: nothing upstream
    for given in (dict(select_run="a" * 32), dict(train_file="/data/train.jsonl")):
        alone = build("sft", SftParams(teacher="7B", student="qwen2.5-0.5b", **given), UP)
        assert names(alone) == ["sft 7B -> qwen2.5-0.5b (seed 42)"] and alone.steps[0].inputs == {}
    with pytest.raises(DistillError, match="unknown model name '9B'"):
        build("sft", SftParams(teacher="9B"), UP)


def test_evaluate_builds_missing_student(tracking):
    """Evaluate builds a student that is not registered and nothing for any other model."""
    for model in ("7B", "qwen2.5-0.5b", "a" * 32, "runs:/" + "a" * 32 + "/model", "models:/other@teacher-7b"):
        assert names(build("evaluate", EvaluateParams(model=model), UP)) == [f"evaluate {model}"]
    uri = "models:/offline-student-qwen2.5-0.5b@teacher-72b-seed7"
    found = build("evaluate", EvaluateParams(model=uri), UpstreamParams(train_limit=16))
    assert names(found) == SELECTION + ["sft 72B -> qwen2.5-0.5b (seed 7)", f"evaluate {uri}"]
    assert found.steps[-1].needs == ["sft 72B -> qwen2.5-0.5b (seed 7)"] and found.steps[0].params.limit == 16
    # the alias without a seed: the grid's first; a mix alias
    assert names(build("evaluate", EvaluateParams(model="models:/offline-student-qwen2.5-0.5b@teacher-7b"), UP))[-2] \
        == "sft 7B -> qwen2.5-0.5b (seed 42)"
    assert names(build("evaluate",
                       EvaluateParams(model="models:/offline-student-qwen2.5-0.5b@teacher-7b-72b"), UP))[-2] \
        == "sft 7B+72B -> qwen2.5-0.5b (seed 42)"
    # registered already: evaluated as it is
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.create_registered_model("offline-student-qwen2.5-0.5b")
    version = client.create_model_version("offline-student-qwen2.5-0.5b", source=str(tracking))
    client.set_registered_model_alias("offline-student-qwen2.5-0.5b", "teacher-72b-seed7", version.version)
    assert names(build("evaluate", EvaluateParams(model=uri), UP)) == [f"evaluate {uri}"]


def test_needs_what_comes_before():
    """Teacher select and tokens need what comes before them unless it is given."""
    teacher = build("teacher", TeacherParams(teacher="１４ｂ", limit=5), UP)
    assert names(teacher) == ["translate", "teacher 14B"] and teacher.targets[0].params.limit == 5
    assert names(build("teacher", TeacherParams(teacher="7B", translation_run="t" * 32), UP)) == ["teacher 7B"]
    select = build("select", SelectParams(n=5), UpstreamParams(teachers=["7B", "14B", "72B"]))
    assert names(select) == ["translate", "teacher 7B", "teacher 14B", "teacher 72B", "select"]
    assert select.targets[0].params.n == 5 and select.targets[0].needs == ["teacher 7B", "teacher 14B", "teacher 72B"]
    assert names(build("select", SelectParams(teacher_runs="a,b"), UP)) == ["select"]
    assert names(build("tokens", TokensParams(), UP)) == SELECTION + ["tokens"]
    assert names(build("tokens", TokensParams(select_run="s" * 32), UP)) == ["tokens"]


def test_report_needs_whole_grid():
    """Report needs the whole grid it reports on."""
    found = build("report", ReportParams(students="qwen2.5-0.5b"), UpstreamParams(limit=4))
    main = mains_steps(students=["qwen2.5-0.5b"], limit=4)
    assert names(found) == list(main)
    report = found.targets[0]
    assert ((report.params.teachers, report.params.students, report.params.seeds)
            == (["7B", "72B"], ["qwen2.5-0.5b"], ["42"]))
    assert report.params.reuse is False and found.steps[0].params.reuse is True  # the report anew, its inputs reused


def test_grid_parameters_per_entry_point():
    """Each entry point takes the grid parameters it uses and refuses the others."""
    argv, up = upstream_params(["--teacher", "7B", "--train_limit", "16", "--plan", "true", "--upstream", "no"],
                               SftParams, "sft")
    assert argv == ["--teacher", "7B"] and (up.train_limit, up.plan, up.upstream) == (16, True, False)
    argv, up = upstream_params(["--model", "7B", "--limit", "3", "--teachers", "7B,14B"], EvaluateParams, "evaluate")
    assert argv == ["--model", "7B", "--limit", "3"] and up.teachers == ["7B", "14B"]  # `limit` is evaluate's own
    with pytest.raises(DistillError, match="unrecognized arguments: --students qwen2.5-0.5b"):
        parse_params(SftParams,
                     upstream_params(["--teacher", "7B", "--students", "qwen2.5-0.5b"], SftParams, "sft")[0])
    with pytest.raises(DistillError, match="n must be an integer >= 1"):
        upstream_params(["--teacher", "7B", "--n", "0"], SftParams, "sft")


# what each phase's consumers read from its run (a run without them is not reused: artifacts_present)
FILES = {"translate": ["translations.jsonl"], "teacher": ["answers.jsonl"],
         "select": ["dev.jsonl", "train/7B.jsonl", "train/72B.jsonl"]}


def _finished(phase: str, params: dict, tags: dict) -> str:
    import mlflow

    with mlflow.start_run(run_name=phase, tags={"distill.phase": phase, **tags}) as run:
        mlflow.log_params(params)
        for path in FILES[phase]:
            mlflow.log_text("", path)
    return run.info.run_id


def test_only_what_is_missing_is_built(tracking):
    """An input not given is looked up as the phase looks it up itself; only where there is none is it built."""
    translation = _finished("translate", {"preset": "offline"}, {})
    seven = _finished("teacher", {"preset": "offline"},
                      {"distill.teacher": "7B", "distill.translation_run_id": translation})
    # the translation is there: a teacher reads it; one teacher of the grid is not: select builds only it, on it
    teacher = build("teacher", TeacherParams(teacher="72B"), UP)
    assert names(teacher) == ["teacher 72B"] and teacher.targets[0].filled({}).translation_run == translation
    partial = build("select", SelectParams(), UP)
    assert names(partial) == ["teacher 72B", "select"] and [(s.name, u.run_id) for s, u in partial.used] == \
        [("translate", translation), ("teacher 7B", seven)]
    assert partial.steps[0].filled({}).translation_run == translation
    assert partial.targets[0].filled({"teacher 72B": "new"}).teacher_runs == [seven, "new"]
    # ... unless the command asks for other upstream runs (`train_limit=`): then only exactly that work is reused
    assert names(build("select", SelectParams(), UpstreamParams(train_limit=16))) == SELECTION
    assert names(build("teacher", TeacherParams(teacher="72B"), UpstreamParams(train_limit=16))) == \
        ["translate", "teacher 72B"]
    seventy_two = _finished("teacher", {"preset": "offline"},
                            {"distill.teacher": "72B", "distill.translation_run_id": translation})
    select = build("select", SelectParams(), UP)
    assert names(select) == ["select"] and select.targets[0].filled({}).teacher_runs == [seven, seventy_two]
    # sft, with no selection yet, selects on those teacher runs
    assert names(build("sft", SftParams(teacher="7B", student="qwen2.5-0.5b"), UP)) == \
        ["select", "sft 7B -> qwen2.5-0.5b (seed 42)"]
    # a selection with the teacher's training set: sft trains on it, every cell of the grid, nothing upstream
    chosen = _finished("select", {"preset": "offline"}, {"distill.teachers": "7B,72B"})
    sft = build("sft", SftParams(teacher="7B"), UP)
    assert names(sft) == ["sft 7B -> qwen2.5-0.5b (seed 42)", "sft 7B -> llm-jp-3.1-1.8b (seed 42)"]
    assert {t.params.select_run for t in sft.targets} == {chosen}
    # ... but not for a teacher it has no set for, nor when `teachers=` asks for another selection
    assert "select" in names(build("sft", SftParams(teacher="14B", student="qwen2.5-0.5b"), UP))
    assert "teacher 32B" in names(build("sft", SftParams(teacher="7B", student="qwen2.5-0.5b"),
                                        UpstreamParams(teachers=["7B", "32B"])))
    tokens = build("tokens", TokensParams(), UP)
    assert names(tokens) == ["tokens"] and tokens.targets[0].params.select_run == chosen
    # a selection of another size asked for (`n=`) is not that one: a new one, on the same teacher runs
    assert names(build("sft", SftParams(teacher="7B", student="qwen2.5-0.5b"), UpstreamParams(n=12))) == \
        ["select", "sft 7B -> qwen2.5-0.5b (seed 42)"]
    assert names(build("tokens", TokensParams(), UpstreamParams(n=12))) == ["select", "tokens"]


def test_selection_over_translation_refused(tracking):
    """A selection larger than the user's translation is refused before any teacher runs."""
    translation = _finished("translate", {"preset": "offline", "n_questions": "16"}, {})
    with pytest.raises(DistillError, match=f"^n=32 questions to select, but your translation run {translation} has "
                                           "only 16: pass n=16 or fewer \\(or allow_fewer=true\\), or train_limit="):
        build("select", SelectParams(), UP)  # the offline preset's n: 32
    assert names(build("select", SelectParams(n=16), UP)) == ["teacher 7B", "teacher 72B", "select"]
    assert names(build("select", SelectParams(allow_fewer=True), UP))[-1] == "select"
    with pytest.raises(DistillError, match="^n=20 questions to select, but .* has only 16: pass n=16 or fewer, or "):
        build("sft", SftParams(teacher="7B"), UpstreamParams(n=20))


def test_translation_files_gone_not_used(tracking):
    """A translation whose files are gone is not built on."""
    import mlflow

    whole = _finished("translate", {"preset": "offline"}, {})
    with mlflow.start_run(tags={"distill.phase": "translate"}) as broken:  # newer, its translations.jsonl gone
        mlflow.log_params({"preset": "offline"})
    found = build("teacher", TeacherParams(teacher="7B"), UpstreamParams(plan=True))
    assert [u.run_id for _, u in found.used] == [whole] and broken.info.run_id != whole
