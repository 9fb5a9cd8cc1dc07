"""The `main` entry point: the whole study of a preset, every step a nested run of its own phase.

The steps are the plan of distill.pipeline.planner (translate -> teachers -> their evaluations -> select -> sft
for every teacher x student x seed -> evaluations, 4-shot baselines, the judge, tokens, report); this module runs
them in order (the sequential executor), distill.pipeline.executors as Ray tasks. A step whose FINISHED run
already exists (same entry point, parameters, upstream run ids and code version) is reused, so typing the command
again costs seconds. Every step that loads a model runs in a process of its own (distill.pipeline.steps) that
sees only the GPUs its step needs (distill.pipeline.gpus); `rehearsal=true` runs a GPU preset on a CPU, on
stand-ins (distill.local_models.rehearsal).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass

from distill import DistillError, disk_full
from distill.config.checks import SEED, Rule
from distill.config.params import Default, check_preset, count_param, limit_param, param, preset_param, reuse_param
from distill.config.params_text import lists_from_text
from distill.phases.contract import PHASES, Phase, PhaseCode, phase
from distill.pipeline import gpus, main_run, planner, retry_hint, step_time
from distill.tracking import cache_keys, phase_runs

console = logging.getLogger(__name__)


def _known(text: str, name: str) -> str:
    """A typed backend or executor checked when parsed, before the grid is planned or a step runs; empty: the
    default."""
    text = text.strip()
    if not text:
        return text
    if name == "backend":
        from distill.generation.backends import check_backend

        return check_backend(text)
    from distill.pipeline.executors import EXECUTORS

    if text not in EXECUTORS:
        raise DistillError(f"unknown executor {text!r}; choose one of {', '.join(EXECUTORS)}")
    return text


_HOW = "how the grid runs, not what it computes: a killed Ray `main` is the same grid for a sequential rerun"
_EACH = "each step's own: the preset's"


@dataclass
class MainParams:
    """Run the whole grid of a preset (narrowed by teachers, students, seeds, limit)."""

    preset: str = preset_param()
    teachers: list[str] = param(factory=list, preset=Default("the preset's `grid.teachers`", paths=("grid.teachers",)),
                                help="comma-separated teachers of the grid")
    students: list[str] = param(factory=list, preset=Default("the preset's `grid.students`", paths=("grid.students",)),
                                help="comma-separated students of the grid")
    seeds: list[str] = param(factory=list, preset=Default("the preset's `grid.seeds`", paths=("grid.seeds",)),
                             rule=SEED, help="comma-separated sft seeds of the grid")
    limit: int | None = limit_param("eval questions per evaluation",
                                    preset=Default("the preset's `grid.eval_limit`", paths=("grid.eval_limit",)))
    train_limit: int | None = param(None, preset=Default(_EACH, paths=("data.train_limit",)),
                                    rule=Rule(int, 1, note="a number of training questions"),
                                    help="translated training questions")
    n: int | None = param(None, preset=Default(_EACH, paths=("select.n",)), help="questions to select",
                          rule=Rule(int, 1, note="questions to select"))
    backend: str = param("", preset=Default("the preset's `backend`"), help="every generating step's backend",
                         parse=lambda text: _known(text, "backend"))
    judge_model: str = param("", preset=Default(_EACH), help="the judge of the `errors` steps")
    judge_base_url: str = param("", preset=Default(_EACH),
                                help="the judge's server; without one (nor OPENAI_API_KEY) `errors` is skipped")
    max_new_tokens: int | None = count_param(None, "generation length of every step", preset=Default(_EACH))
    rehearsal: bool = param(False,
                            help="let a GPU preset run on a CPU (stand-in models: distill/local_models/rehearsal.py)")
    reuse: bool = reuse_param()
    plan: bool = param(False, unkeyed="prints what would run, runs nothing",
                       help="`true`: print the steps it would run and those it reuses, each with its GPUs, GPU-hours, "
                            "disk and download, and the totals, then stop")
    gpu_hour_price: float | None = param(None, preset="grid.gpu_hour_price",
                                         unkeyed="prices the plan, computes nothing",
                                         rule=Rule(float, 0, note="a price per GPU-hour"),
                                         help="with `plan=true`: the price of one GPU-hour; the plan adds each step's "
                                              "cost and the total")
    executor: str = param("sequential", unkeyed=_HOW, help="`sequential`, or `ray`: independent steps at once as "
                                                           "Ray tasks (distill/pipeline/executors.py)",
                          parse=lambda text: _known(text, "executor") or "sequential")
    ray_address: str = param("", preset=Default("`$RAY_ADDRESS`, else a local Ray"), unkeyed=_HOW,
                             help="a Ray cluster to join")

    __post_init__ = lists_from_text  # comma-joined text -> list[str], here only


@contextmanager
def _rehearsal(on: bool):
    """Every phase run of this `main`, here and in its step processes, tagged (and keyed) as a rehearsal."""
    cache_keys.REHEARSAL = on
    try:
        yield
    finally:
        cache_keys.REHEARSAL = False


# Phases that load a model or a tokenizer: each runs in a process of its own (distill.pipeline.steps). select,
# errors (HTTP only) and report load none and run here.
ISOLATED = {p.module for p in PHASES.values() if p.own_process}


def _result(run_id: str) -> str:
    """What a step found, for its one console line: an evaluation's accuracy."""
    import mlflow

    try:
        acc = mlflow.get_run(run_id).data.metrics.get("accuracy")
    except Exception:  # noqa: BLE001 - the line is a courtesy
        return ""
    return f": accuracy {acc:.2f}%" if acc is not None else ""


def prepare(p: MainParams) -> None:
    """Called by cli.run_phase before MLflow is imported and the tracking store set up: the step
    processes' fork server starts now, its imports beside that start-up rather than before the first step;
    and `mlflow run`'s run is noted before the preset's experiment may take it out of the environment."""
    from distill.pipeline import main_run

    main_run.note_cli_run()
    if p.plan:  # a plan asks the Hub nothing: a step whose input is not on this machine is one to run
        from distill.config.environment import offline_env

        offline_env(force=True)
    if p.executor == "sequential" and not p.plan:
        from distill.pipeline.steps import start_server_early

        start_server_early()


class Steps:
    """Runs steps in order, records what was reused, and names the step that failed. `gpus`: the GPUs
    this process may hand out (distill.pipeline.gpus.visible); each step process sees the first its step needs."""

    def __init__(self, ctx=None, main_run_id: str | None = None, gpus: list[str] | None = None, label: str = "main",
                 estimates: dict | None = None):
        self.log: list[dict] = []
        self.ctx, self.main_run_id, self.gpus, self.label = ctx, main_run_id, list(gpus or []), label
        self.estimates = estimates or {}  # step name -> what the plan expects of it (distill.estimates.steps)
        self.fresh: set[str] = set()  # runs this `main` made, not reused: no earlier run was fed them

    def _fed_fresh(self, params) -> bool:
        """Whether an input of the step is a run this `main` just made: its cache key is new, so there is
        nothing to reuse, and looking for it (here and in the step) costs ~0.15 s a step for nothing."""
        values = []
        for v in dataclasses.asdict(params).values():
            values += [x for x in (v if isinstance(v, list) else [v]) if isinstance(x, str) and x]
        return any(run_id in v for v in values for run_id in self.fresh)

    def _run(self, fn, params, gpus: int):
        fresh = self._fed_fresh(params)
        if self.ctx is None or fn.__module__ not in ISOLATED:
            phase_runs.FRESH_INPUTS = fresh
            try:
                return fn(params)
            finally:
                phase_runs.FRESH_INPUTS = False
        # A step that is reused loads nothing: ask here first, start a process only for real work.
        if not fresh:
            phase_runs.REUSE_ONLY = True
            try:
                return fn(params)
            except phase_runs.NotReused:
                pass
            finally:
                phase_runs.REUSE_ONLY = False
        from distill.pipeline.gpus import for_step
        from distill.pipeline.steps import run_in_process

        return run_in_process(self.ctx, fn.__module__, params, self.main_run_id, fresh_inputs=fresh,
                              cuda_visible_devices=for_step(gpus, self.gpus))

    def __call__(self, name: str, fn, params, gpus: int = 0):
        from distill.pipeline.steps import StepError

        started: list[phase_runs.PhaseRun] = []  # every run the step started or reused, as it happened
        t0 = time.perf_counter()
        try:
            with phase_runs.on_phase_run(started.append):
                run_id = self._run(fn, params, gpus)
        except Exception as e:
            where = f" (run {started[-1].run_id})" if started else ""
            full = None if isinstance(e, (DistillError, StepError)) else disk_full.explain(e, f"{name} output")
            detail = full or (str(e) if isinstance(e, (DistillError, StepError)) else f"{type(e).__name__}: {e}")
            if full or disk_full.is_line(detail):  # its line says what to do (free space there first)
                raise DistillError(f"step {name} failed{where}: {detail}") from e
            raise DistillError(f"step {name} failed{where}: {detail}; "
                               f"{retry_hint.after_failure(isinstance(e, DistillError))}") from e
        reused = bool(started and started[-1].reused)
        if not reused:
            self.fresh.add(run_id)
            step_time.log_step_time(run_id, time.perf_counter() - t0, gpus, self.estimates.get(name))
        self.log.append({"step": name, "run_id": run_id, "reused": reused,
                         "seconds": round(time.perf_counter() - t0, 2), "gpus": gpus})
        console.info(f"{self.label}: {name}: {'reused' if reused else 'ran'} {run_id} "
                     f"({time.perf_counter() - t0:.1f}s){_result(run_id)}")
        return run_id


def phase_function(name: str):
    """The `run` of a phase (`errors` -> distill.phases.errors.run)."""
    return phase(name).code.run


def walk(step: Steps, steps: list[planner.Step]) -> dict[str, str]:
    """The sequential executor: every step in plan order, its inputs filled with the runs of the steps
    before it; step name -> run id. `main` walks its whole grid, an entry point what its targets need."""
    done: dict[str, str] = {}
    for s in steps:
        done[s.name] = step(s.name, phase_function(s.phase), s.filled(done), gpus=s.gpus)
    return done


def reuse_key(p: MainParams) -> dict:
    """The payload of the grid's key (main_run.key_payload): it finds the dead tries of the same grid."""
    return main_run.key_payload(p, planner.resolve_grid(p))


def print_plan(p: MainParams, grid: planner.Grid, steps: list[planner.Step]) -> None:
    """`plan=true`: the grid's steps, `run` or `reuse <run id>`, as the entry points print theirs, each priced
    (distill.pipeline.priced_plan); nothing runs."""
    from distill.estimates.measured import earlier_rates
    from distill.estimates.steps import estimate
    from distill.pipeline import priced_plan, upstream

    unchecked: dict[str, list[str]] = {}  # why -> the steps

    def finished(step, params):  # an input not on this machine (a Hub data set, offline): the step is one to run
        try:
            return planner.finished_run(step, params)
        except DistillError as e:
            unchecked.setdefault(str(e), []).append(step.name)
            return None

    status = planner.pending(steps, finished)
    estimates = estimate(steps, grid, p, earlier_rates(grid.preset.name, grid.backend),
                         to_run={x.step.name for x in status if x.reuse is None})
    price = p.gpu_hour_price if p.gpu_hour_price is not None else grid.preset.grid.gpu_hour_price
    lines = priced_plan.table("main", status, estimates, price)
    if p.rehearsal:
        lines.append("  rehearsal: every model a stand-in built on this machine (distill/local_models/rehearsal.py): "
                     "nothing downloaded, no GPU, sizes of a few MB")
    lines += [f"  not checked for reuse (a plan asks the Hub nothing; this input is not on this machine), so counted "
              f"as to run: {', '.join(names)}: {why}" for why, names in unchecked.items()]
    print("\n".join(lines), flush=True)
    upstream._plan_on_cli_run(lines)  # noqa: SLF001 - the entry points' note on `mlflow run`'s run, shared


def run(p: MainParams) -> str | None:
    grid = planner.resolve_grid(p, hardware=not p.plan)  # a plan of a GPU preset may be read on a laptop
    steps = planner.plan(p, grid)
    # Every value a step will read, before any runs.
    check_preset(grid.preset, dict.fromkeys(type(s.params) for s in steps))
    if p.plan:
        return print_plan(p, grid, steps)
    if not grid.judge:
        console.info("main: errors skipped: no judge configured (set OPENAI_API_KEY or judge_base_url)")
    if p.executor != "sequential":
        from distill.pipeline.executors import run_concurrent

        return run_concurrent(p, grid, steps)
    visible = []
    if any(s.gpus for s in steps):  # only then: a CPU preset's `main` never imports torch
        visible = gpus.visible()
        gpus.check_fits(steps, visible)
    from distill.pipeline.steps import step_server

    t0 = time.perf_counter()
    with (_rehearsal(p.rehearsal), step_server() as ctx, main_run.main_run(p, grid) as main):
        step = Steps(ctx, main.run_id, visible, estimates=step_time.estimates_for(p, grid, steps))
        done = walk(step, steps)
        seconds = time.perf_counter() - t0
        reused = sum(s["reused"] for s in step.log)
        main_run.record(main, step.log, seconds)
        main_run.describe(main, grid.preset.name, step.log, done["report"])
        console.info(f"main: {len(step.log)} steps, {reused} reused, {seconds:.0f}s; report run {done['report']}")
        if reused:
            console.info("main: reused " + ", ".join(s["step"] for s in step.log if s["reused"]))
        return main.run_id


# `main` as an entry point, in the phases' contract: the CLI reads it as it reads a phase (distill.entry_points).
MAIN = Phase("main", lambda: PhaseCode(MainParams, run, reuse_key, prepare=prepare), trains=True)
