"""The `main` entry point: the whole study of a preset, every step a nested run of its own phase.

translate -> each teacher -> teachers' eval accuracy -> select -> sft for every teacher x student x
seed -> evaluate each student -> 4-shot baselines -> errors (when a judge is configured) -> tokens
-> report. A step whose FINISHED run already exists (same entry point, parameters, upstream run ids
and code version) is reused, so typing the command again costs seconds. Every step that loads a model
runs in a process of its own (distill.steps); `rehearsal=true` runs a GPU preset on a CPU, on stand-ins
(distill.rehearsal).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from distill import DistillError
from distill.phases import module_name
from distill.config import load_preset, resolve_names
from distill import cache_keys, claims, lineage, tracking
from distill.params_text import lists_from_text

console = logging.getLogger(__name__)


@dataclass
class MainParams:
    """Run the whole grid of a preset (narrowed by teachers, students, seeds, limit)."""

    preset: str = "offline"
    teachers: list[str] = field(default_factory=list)  # comma-separated; empty: the preset's grid
    students: list[str] = field(default_factory=list)
    seeds: list[str] = field(default_factory=list)
    limit: int | None = None        # eval questions per evaluation; empty: the preset's grid
    train_limit: int | None = None  # translated training questions; empty: the preset's
    n: int | None = None            # questions to select; empty: the preset's
    backend: str = ""
    judge_model: str = ""
    judge_base_url: str = ""
    max_new_tokens: int | None = None  # generation length of every step; empty: the preset's
    rehearsal: bool = False        # let a GPU preset run on a CPU (stand-in models: distill.rehearsal)
    reuse: bool = True
    executor: str = "sequential"    # sequential | ray: independent steps at once as Ray tasks (distill/executors.py)
    ray_address: str = ""           # a Ray cluster to join; empty: $RAY_ADDRESS, else a local Ray

    __post_init__ = lists_from_text  # comma-joined text -> list[str], here only


@contextmanager
def _rehearsal(on: bool):
    """Every phase run of this `main`, here and in its step processes, tagged (and keyed) as a rehearsal."""
    cache_keys.REHEARSAL = on
    try:
        yield
    finally:
        cache_keys.REHEARSAL = False


def _names(given: list[str], default: list) -> list[str]:
    return list(given) if given else [str(x) for x in default]


def parse_seeds(text: list[str], default: list) -> list[int]:
    """`1,2,3` -> [1, 2, 3]; anything else is one line naming the bad item."""
    from distill.checks import check

    seeds = []
    for item in _names(text, default):
        try:
            seeds.append(int(item))
        except ValueError:
            raise DistillError(f"seeds must be comma-separated integers like 1,2,3 (got {item!r} in {','.join(map(str, text))!r})") from None
        check("seed", seeds[-1], label="seeds")
    return seeds


def _has_gpu() -> bool:
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # ask without making a CUDA context here
    import torch

    return torch.cuda.is_available()


def check_hardware(preset, backend: str, rehearsal: bool = False) -> None:
    if not preset.needs_gpu or backend == "openai":
        return
    if rehearsal:
        if backend == "vllm" and not _has_gpu():  # with a GPU, vLLM itself can be rehearsed on the stand-ins
            raise DistillError("rehearsal=true runs on stand-in models without a GPU: add backend=transformers")
        console.info(f"main: rehearsal of preset {preset.name!r}: no GPU check; every run is tagged "
                     f"{lineage.REHEARSAL}=true")
        return
    if not _has_gpu():
        raise DistillError(f"preset {preset.name!r} needs a GPU (vLLM generation, 70B-class models) and this "
                           "machine has none; use preset=offline here, or backend=openai with a served model "
                           "(rehearsal=true backend=transformers runs it on stand-ins: see the README)")


# Phases that load a model or a tokenizer: each runs in a process of its own (distill.steps). select,
# errors (HTTP only) and report load none and run here.
ISOLATED = {module_name(p) for p in ("translate", "teacher", "evaluate", "sft", "tokens")}


def _result(run_id: str) -> str:
    """What a step found, for its one console line: an evaluation's accuracy."""
    import mlflow

    try:
        acc = mlflow.get_run(run_id).data.metrics.get("accuracy")
    except Exception:  # noqa: BLE001 - the line is a courtesy
        return ""
    return f": accuracy {acc:.2f}%" if acc is not None else ""


def resolve_grid(p: "MainParams") -> tuple[dict, list[str], list[str], list[int], str, int | None, bool]:
    """The grid `main` runs, checked before any step starts (both executors): the preset, teachers,
    students, seeds, backend, eval limit and whether a judge is configured."""
    preset = load_preset(p.preset)
    grid = preset.grid
    # in the preset's spelling (`7b` -> `7B`): the steps' parameters, tags and cache keys use these names
    teachers = resolve_names(_names(p.teachers, grid.teachers or list(preset.teachers)), preset, "teacher", "teachers")
    students = resolve_names(_names(p.students, grid.students or list(preset.students)), preset, "student", "students")
    seeds = parse_seeds(p.seeds, grid.seeds)
    if len(teachers) < 2:
        raise DistillError(f"main needs at least two teachers to select questions on (got {teachers})")
    backend = p.backend or preset.backend
    check_hardware(preset, backend, p.rehearsal)
    limit = p.limit if p.limit is not None else grid.eval_limit
    judge = bool(p.judge_base_url or os.environ.get("OPENAI_API_KEY") or preset.judge.base_url)
    return preset, teachers, students, seeds, backend, limit, judge


def prepare(p: MainParams) -> None:
    """Called by cli.run_phase before MLflow is imported and the tracking store set up: the step
    processes' fork server starts now, its imports beside that start-up rather than before the first step."""
    if p.executor == "sequential":
        from distill.steps import start_server_early

        start_server_early()


class Steps:
    """Runs steps in order, records what was reused, and names the step that failed."""

    def __init__(self, ctx=None, main_run_id: str | None = None):
        self.log: list[dict] = []
        self.ctx, self.main_run_id = ctx, main_run_id
        self.fresh: set[str] = set()  # runs this `main` made, not reused: no earlier run was fed them

    def _fed_fresh(self, params) -> bool:
        """Whether an input of the step is a run this `main` just made: its cache key is new, so there is
        nothing to reuse, and looking for it (here and in the step) costs ~0.15 s a step for nothing."""
        values = [v for v in dataclasses.asdict(params).values() if isinstance(v, str) and v]
        return any(run_id in v for v in values for run_id in self.fresh)

    def _run(self, fn, params):
        fresh = self._fed_fresh(params)
        if self.ctx is None or fn.__module__ not in ISOLATED:
            tracking.FRESH_INPUTS = fresh
            try:
                return fn(params)
            finally:
                tracking.FRESH_INPUTS = False
        # A step that is reused loads nothing: ask here first, start a process only for real work.
        if not fresh:
            tracking.REUSE_ONLY = True
            try:
                return fn(params)
            except tracking.NotReused:
                pass
            finally:
                tracking.REUSE_ONLY = False
        from distill.steps import run_in_process

        return run_in_process(self.ctx, fn.__module__, params, self.main_run_id, fresh_inputs=fresh)

    def __call__(self, name: str, fn, params):
        from distill.steps import StepError

        started: list[tracking.PhaseRun] = []  # every run the step started or reused, as it happened
        t0 = time.perf_counter()
        try:
            with tracking.on_phase_run(started.append):
                run_id = self._run(fn, params)
        except Exception as e:
            where = f" (run {started[-1].run_id})" if started else ""
            detail = str(e) if isinstance(e, (DistillError, StepError)) else f"{type(e).__name__}: {e}"
            raise DistillError(f"step {name} failed{where}: {detail}; type the same command again to continue "
                               "from there") from e
        reused = bool(started and started[-1].reused)
        if not reused:
            self.fresh.add(run_id)
        self.log.append({"step": name, "run_id": run_id, "reused": reused, "seconds": round(time.perf_counter() - t0, 2)})
        console.info(f"main: {name}: {'reused' if reused else 'ran'} {run_id} "
                     f"({time.perf_counter() - t0:.1f}s){_result(run_id)}")
        return run_id


def _link(text: str, experiment_id: str, run_id: str, artifact: str = "") -> str:
    """A link the MLflow UI follows from any host: a hash route of its run page (or an artifact in it)."""
    tail = f"/artifactPath/{artifact}" if artifact else ""
    return f"[{text}](#/experiments/{experiment_id}/runs/{run_id}{tail})"


def main_note(preset: str, params: dict, log: list[dict], report_run: str, experiment_id: str) -> str:
    """The main run's description (Markdown): the grid, Table 1 inline with links to the report, and
    every step's run, reused or not."""
    reused = sum(s["reused"] for s in log)
    try:
        table = tracking.read_text_artifact(report_run, "tables/table1.md").strip()
    except Exception as e:  # noqa: BLE001 - the description still links the report
        table = f"(Table 1 could not be read: {type(e).__name__})"
    out = [f"**distill `main`, preset `{preset}`**: teachers {params['teachers']} x students {params['students']} "
           f"x seeds {params['seeds']}; {params['limit'] or 'all'} evaluation questions each.", "",
           f"**Table 1** below; the full report: {_link('report run', experiment_id, report_run)}, "
           f"{_link('report.md', experiment_id, report_run, 'report.md')}, "
           f"{_link('Fig. 1', experiment_id, report_run, 'figures/fig1_accuracy.html')}.", "",
           "### Table 1: student accuracy by teacher (%)", "", table, "",
           f"### Steps: {len(log)}, " + (f"reused {reused} of {len(log)}" if reused else "none reused"), "",
           "| step | run | |", "|---|---|---|"]
    for s in log:
        what = "reused (an earlier run)" if s["reused"] else f"ran, {s['seconds']:.0f}s"
        out.append(f"| {s['step']} | {_link(s['run_id'][:8], experiment_id, s['run_id'])} | {what} |")
    return "\n".join(out)


def run(p: MainParams) -> str:
    from distill.phases.judge import ErrorsParams, run as errors
    from distill.phases.evaluate import EvaluateParams, run as evaluate
    from distill.phases.report import ReportParams, run as report
    from distill.phases.select import SelectParams, run as select
    from distill.phases.sft import SftParams, run as sft
    from distill.phases.teacher import TeacherParams, run as teacher
    from distill.phases.tokens import TokensParams, run as tokens
    from distill.phases.translate import TranslateParams, run as translate

    if p.executor != "sequential":
        from distill.executors import run_concurrent

        return run_concurrent(p)
    preset, teachers, students, seeds, backend, limit, judge = resolve_grid(p)
    params = {"preset": preset.name, "teachers": ",".join(teachers), "students": ",".join(students),
              "seeds": ",".join(map(str, seeds)), "limit": limit, "train_limit": p.train_limit, "n": p.n, "backend": backend,
              "judge": judge, "max_new_tokens": p.max_new_tokens, "rehearsal": p.rehearsal}
    import mlflow

    from distill.steps import step_server

    t0 = time.perf_counter()
    key = cache_keys.cache_key("pipeline", params)  # lets the next `main` mark a killed one KILLED
    main_tags = {lineage.PHASE: "main", lineage.CACHE_KEY: key, lineage.HEARTBEAT: f"{time.time():.3f}",
                 **({lineage.REHEARSAL: "true"} if p.rehearsal else {})}
    with (_rehearsal(p.rehearsal), step_server() as ctx,
          mlflow.start_run(run_name=f"main-{preset.name}", tags=main_tags) as main_run,
          claims.Heartbeat(main_run.info.run_id)):
        claims.mark_dead(key, main_run.info.run_id)
        tracking.log_params_merged(main_run, params)
        step = Steps(ctx, main_run.info.run_id)
        common = dict(preset=p.preset, reuse=p.reuse)
        gen = dict(backend=p.backend, max_new_tokens=p.max_new_tokens)
        translation = step("translate", translate, TranslateParams(limit=p.train_limit, **gen, **common))
        teacher_runs = {t: step(f"teacher {t}", teacher, TeacherParams(teacher=t, translation_run=translation, **gen, **common))
                        for t in teachers}
        for t in teachers:
            step(f"evaluate teacher {t}", evaluate, EvaluateParams(model=t, limit=limit, **gen, **common))
        selection = step("select", select, SelectParams(teacher_runs=",".join(teacher_runs.values()), n=p.n, **common))
        eval_runs = {}
        for t in teachers:
            for s in students:
                for seed in seeds:
                    sft_run = step(f"sft {t} -> {s} (seed {seed})", sft,
                                   SftParams(teacher=t, student=s, seed=seed, select_run=selection, **common))
                    eval_runs[(t, s, seed)] = step(f"evaluate {s} <- {t} (seed {seed})", evaluate,
                                                   EvaluateParams(model=sft_run, limit=limit, **gen, **common))
        for s in students:
            step(f"baseline {s} (4-shot)", evaluate,
                 EvaluateParams(model=s, mode="few-shot", limit=limit, **gen, **common))
        if judge:
            judged = [t for t in preset.judge.teachers if t in teachers] or teachers
            for (t, s, seed), eval_run in eval_runs.items():
                if t in judged:
                    step(f"errors {s} <- {t} (seed {seed})", errors,
                         ErrorsParams(eval_run=eval_run, judge_model=p.judge_model, judge_base_url=p.judge_base_url,
                                      **common))
        else:
            console.info("main: errors skipped: no judge configured (set OPENAI_API_KEY or judge_base_url)")
        step("tokens", tokens, TokensParams(select_run=selection, **common))
        report_run = step("report", report, ReportParams(preset=p.preset, teachers=",".join(teachers),
                                                         students=",".join(students), seeds=",".join(map(str, seeds)),
                                                         reuse=p.reuse))
        reused = sum(s["reused"] for s in step.log)
        seconds = time.perf_counter() - t0
        mlflow.log_metrics({"steps": len(step.log), "steps_reused": reused, "main_seconds": seconds})
        mlflow.log_dict({"steps": step.log}, "steps.json")
        mlflow.set_tag(lineage.REPORT_RUN_ID, report_run)
        name = f"main-{preset.name}" + (f" (reused {reused} of {len(step.log)} steps)" if reused else "")
        mlflow.set_tags({"mlflow.runName": name, "mlflow.note.content": main_note(
            preset.name, params, step.log, report_run, main_run.info.experiment_id)})
        console.info(f"main: {len(step.log)} steps, {reused} reused, {seconds:.0f}s; report run {report_run}")
        if reused:
            console.info("main: reused " + ", ".join(s["step"] for s in step.log if s["reused"]))
        return main_run.info.run_id
