"""The grid written once (distill.pipeline.planner): its steps, their GPUs, what a target needs, and that the
sequential and the Ray executor hand exactly the same steps to their processes."""

import hashlib

import mlflow
import pytest

from distill import DistillError, pipeline
from distill.config.presets import load_preset
from distill.phases.contract import phase
from distill.pipeline import MainParams, executors, planner


def _plan(preset: str, judge: bool = False, **kw):
    p = MainParams(preset=preset, **kw)
    pr = load_preset(preset)
    grid = planner.Grid(pr, list(pr.grid.teachers), list(pr.grid.students), [42], p.backend or pr.backend, None, judge)
    return planner.plan(p, grid)


def test_step_asks_preset_for_needs():
    """Each step asks for what it needs from the preset."""
    steps = {s.name: s for s in _plan("paper", judge=True)}
    assert steps["translate"].gpus == 4                       # the 70B translator, tensor parallel 4
    assert steps["teacher 72B"].gpus == 4 and steps["teacher 7B"].gpus == 1
    assert steps["evaluate teacher 72B"].gpus == 4
    assert steps["sft 7B -> llm-jp-3.1-1.8b (seed 42)"].gpus == 1
    assert steps["evaluate llm-jp-3.1-1.8b <- 7B (seed 42)"].gpus == 1
    for cpu_only in ("select", "tokens", "report", "errors qwen2.5-0.5b <- 72B (seed 42)"):
        assert steps[cpu_only].gpus == 0
    served = _plan("paper", backend="openai")  # generation by served models: no GPU of the step's own; SFT still one
    assert all(s.gpus == (1 if s.phase == "sft" else 0) for s in served)
    assert all(s.gpus == 0 for s in _plan("offline"))
    assert all(s.gpus == 0 for s in _plan("paper", backend="transformers", rehearsal=True))  # stand-ins on a CPU
    # the graph: teachers after the translation, select after every teacher, evaluation after its student,
    # the judge after its evaluation, the report after everything
    assert steps["teacher 7B"].needs == ["translate"] and not steps["evaluate teacher 7B"].needs
    assert steps["select"].needs == [f"teacher {t}" for t in ("7B", "14B", "32B", "72B")]
    assert steps["evaluate qwen2.5-0.5b <- 14B (seed 42)"].needs == ["sft 14B -> qwen2.5-0.5b (seed 42)"]
    assert steps["errors qwen2.5-0.5b <- 7B (seed 42)"].needs == ["evaluate qwen2.5-0.5b <- 7B (seed 42)"]
    assert set(steps["report"].needs) == set(steps) - {"report"}
    assert not any(n.startswith("errors") and "14B" in n for n in steps)  # the judge sees 7B and 72B only


def test_transformers_tensor_parallel_gpus():
    """Transformers gives the large models their tensor-parallel GPUs.

    backend=transformers on the paper preset: the 70B translator and the 72B teacher get as many GPUs as their
    tensor_parallel_size (the generator spreads them over those: hf.load_placement); one GPU held ~140 GB of
    weights and ran out of memory. A model of one GPU keeps one; a CPU preset or the rehearsal none."""
    steps = {s.name: s for s in _plan("paper", backend="transformers")}
    assert steps["translate"].gpus == 4
    assert steps["teacher 72B"].gpus == 4 and steps["evaluate teacher 72B"].gpus == 4
    assert steps["teacher 7B"].gpus == 1 and steps["evaluate llm-jp-3.1-1.8b <- 72B (seed 42)"].gpus == 1
    assert steps["sft 72B -> llm-jp-3.1-1.8b (seed 42)"].gpus == 1
    pr = load_preset("paper")
    assert planner.gpus_for_generation(pr, "transformers", 4) == 4
    assert planner.gpus_for_generation(pr, "transformers", 4, rehearsal=True) == 0
    assert planner.gpus_for_generation(load_preset("offline"), "transformers", 4) == 0


def test_target_needs_given_finished():
    """What a target needs given what is finished."""
    steps = _plan("offline")
    target = "evaluate qwen2.5-0.5b <- 72B (seed 42)"
    need = planner.upstream(steps, [target])
    assert [s.name for s in need] == ["translate", "teacher 7B", "teacher 72B", "select",
                                      "sft 72B -> qwen2.5-0.5b (seed 42)", target]
    with pytest.raises(DistillError, match="no step named 'sft 9B' in this grid; its steps: translate, teacher 7B"):
        planner.upstream(steps, ["sft 9B"])

    finished = {"translate": "t" * 32, "teacher 7B": "a" * 32, "teacher 72B": "b" * 32}
    asked = []

    def probe(step, params):  # the store, as tracking's cache key would answer: only these are done
        asked.append((step.name, params))
        return finished.get(step.name)

    status = {p.step.name: p.reuse for p in planner.pending(need, probe)}
    assert status == {"translate": "t" * 32, "teacher 7B": "a" * 32, "teacher 72B": "b" * 32, "select": None,
                      "sft 72B -> qwen2.5-0.5b (seed 42)": None, target: None}
    # each step was asked with its inputs filled from the finished runs; nothing fed by `select` was asked
    by_name = dict(asked)
    assert by_name["teacher 72B"].translation_run == "t" * 32
    assert by_name["select"].teacher_runs == ["a" * 32, "b" * 32]
    assert set(by_name) == {"translate", "teacher 7B", "teacher 72B", "select"}


def test_finished_asked_of_store(tracking):
    """What is finished is asked of the store.

    planner.finished_run: the phases' own reuse check, against a real store: nothing is written by asking."""
    p = MainParams(preset="offline", train_limit=2, max_new_tokens=4)
    steps = planner.plan(p, planner.resolve_grid(p))
    need = planner.upstream(steps, ["select"])
    assert [x.reuse for x in planner.pending(need, planner.finished_run)] == [None] * 4
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
    translation = pipeline.phase_function("translate")(need[0].filled({}))  # the translation done, as `main` would
    status = planner.pending(need, planner.finished_run)
    assert [x.reuse for x in status] == [translation, None, None, None]
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == 1


def _fake_run_id(name: str) -> str:
    return hashlib.md5(name.encode()).hexdigest()


def test_executors_hand_same_steps(tracking, monkeypatch):
    """Both executors hand the same steps to their processes.

    Each executor runs the whole offline grid through its own code down to the point where a step is handed
    to a process (sequential: Steps, Ray: the task launch); what each hands over must be the same: name, phase,
    parameters with their inputs filled, GPUs. The main runs they open carry the same params and tags."""
    p = dict(preset="offline", limit=4, train_limit=16, n=12)
    sequential, ray = [], []

    def handed_over(self, name, fn, params, gpus=0):
        sequential.append((name, fn.__module__, params, gpus))
        self.log.append({"step": name, "run_id": _fake_run_id(name), "reused": False, "seconds": 0.0})
        return _fake_run_id(name)

    monkeypatch.setattr(pipeline.Steps, "__call__", handed_over)
    seq_main = pipeline.run(MainParams(**p))

    def launch(step, params, env):
        ray.append((step.name, phase(step.phase).module, params, executors.task_options(step)["num_gpus"]))
        assert env[executors.PARENT_ENV] == mlflow.active_run().info.run_id
        return step.name

    def next_result(handles):
        return handles[0], {"run_id": _fake_run_id(handles[0]), "reused": False, "error": None, "seconds": 0.0}

    grid = planner.resolve_grid(MainParams(**p, executor="ray"))
    ray_main = executors.run_steps(planner.plan(MainParams(**p, executor="ray"), grid),
                                   MainParams(**p, executor="ray"),
                                   grid, launch, next_result, "http://127.0.0.1:1", n_nodes=1)
    assert len(sequential) == 18 and sorted(sequential, key=str) == sorted(ray, key=str)

    a, b = mlflow.get_run(seq_main), mlflow.get_run(ray_main)
    assert {k: v for k, v in a.data.params.items() if k != "executor"} == \
           {k: v for k, v in b.data.params.items() if k != "executor"}
    assert (a.data.params["executor"], b.data.params["executor"]) == ("sequential", "ray")
    same = ("distill.phase", "distill.cache_key", "distill.report_run_id")
    assert {t: a.data.tags.get(t) for t in same} == {t: b.data.tags.get(t) for t in same}
    assert "distill.heartbeat" in a.data.tags and "distill.heartbeat" in b.data.tags
