"""An entry point that builds what it needs first, like `make`: `mlflow run . -e sft -P teacher=7B` on an empty
store translates, runs the teachers the selection needs, selects, then trains the preset's students.

The targets and what they need come from targets.py (the planner's grid); which of those steps are finished
comes from planner.pending, asked before anything starts and printed (`-P plan=true` prints only that). Then:
- nothing but the one target to run (its upstream finished, or given): the phase runs here, as it always did,
  with its inputs set to the finished runs;
- anything more: the steps run as `main` runs its grid, by the same sequential executor (`walk` in this
  package's __init__): every model-loading step in a process of its own that sees only its GPUs (steps.py),
  nested under one run of this entry point (main_run.parent_run: the run `mlflow run` opened under
  `--experiment-name`, else one in the preset's experiment, which `mlflow run`'s run then beats with), finished
  steps reused.
`-P upstream=false` runs the phase alone, which refuses a missing input as it always did; so does each process
of a launcher (`torchrun`, `accelerate launch`: one rank each of one `sft` run), whose upstream is built before
the launch, in one process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from distill.phases.contract import Phase
from distill.pipeline import planner
from distill.pipeline.targets import Build, UpstreamParams, build
from distill.tracking import cache_keys, lineage
from distill.training.ranks import world_size

console = logging.getLogger(__name__)


def plan_lines(label: str, status: list[planner.Pending]) -> list[str]:
    """What the entry point will do: a header, then a line per step, `run` or `reuse <run id>`."""
    todo = sum(x.reuse is None for x in status)
    out = [f"{label}: {len(status)} step{'s' if len(status) != 1 else ''}, {todo} to run, "
           f"{len(status) - todo} reused"]
    width = max(len(x.step.name) for x in status)
    for x in status:
        out.append(f"  reuse  {x.step.name:<{width}}  {x.reuse}" if x.reuse else f"  run    {x.step.name}")
    return out


def _plan_on_cli_run(lines: list[str]) -> None:
    """`plan=true` starts no run. The one `mlflow run` opened before the entry point started (it cannot be
    removed: `mlflow run` ends it afterwards, and a deleted run cannot be ended) says it was a plan, and which."""
    from distill.pipeline import main_run

    if not main_run.CLI_RUN_ID:
        return
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient()
        client.set_tag(main_run.CLI_RUN_ID, lineage.PLAN_ONLY, "true")
        client.set_tag(main_run.CLI_RUN_ID, "mlflow.note.content",
                       "`plan=true`: nothing ran. The plan:\n\n```\n" + "\n".join(lines) + "\n```")
    except Exception as e:  # noqa: BLE001 - a run of another store: the plan is printed all the same
        console.warning(f"plan: could not note the plan on the run `mlflow run` opened ({type(e).__name__})")


def _alone(phase: str, params) -> Build:
    step = planner.Step(phase, phase, params)
    return Build([step], [step])


def run(this: Phase, params, up: UpstreamParams) -> str | None:
    """`-e <phase>` with its upstream (or without: upstream=false); the target's run id when there is one."""
    phase = label = this.name
    code = this.code
    # this phase only: asked to, or one rank of a launch (every other rank runs the same phase)
    if not up.plan and (not up.upstream or world_size() > 1):
        return code.run(params)
    if up.upstream and code.preflight:  # a bad setting of the target stops it before its upstream runs
        code.preflight(params)
    found = build(phase, params, up) if up.upstream else _alone(phase, params)
    for _, used in found.used:  # what it builds on instead of building it (users_runs): said before anything runs
        console.info(f"{label}: using your {used.line}")
    status = found.status(planner.pending(found.steps, planner.finished_run))
    lines = plan_lines(label, status)
    print("\n".join(lines), flush=True)
    if up.plan:
        _plan_on_cli_run(lines)
        return None
    to_run = [x.step for x in status if x.reuse is None]
    if len(found.targets) == 1 and all(s is found.targets[0] for s in to_run):
        # the target alone: here, as the phase always ran, its inputs the runs that are finished
        done = {x.step.name: x.reuse for x in status if x.reuse}
        return timed_alone(code.run, found.targets[0], found.targets[0].filled(done))
    return run_steps(label, found, to_run, load_preset_name(params))


def timed_alone(run_phase: Callable[[Any], str], step: planner.Step, params) -> str:
    """The target run here, alone: its run logs what it cost (step_time) as a step of `main` does, unless reused."""
    from distill.pipeline import step_time
    from distill.tracking import phase_runs

    started: list = []
    t0 = time.perf_counter()
    with phase_runs.on_phase_run(started.append):
        run_id = run_phase(params)
    if not (started and started[-1].reused):
        step_time.log_step_time(run_id, time.perf_counter() - t0, step.gpus)
    return run_id


def load_preset_name(params) -> str:
    from distill.config.presets import load_preset

    return load_preset(params.preset).name


def build_key(label: str, steps: list[planner.Step]) -> str:
    """The cache key of what this command runs: a later try of the same command marks this one KILLED if it died."""
    return cache_keys.cache_key("pipeline", {"entry_point": label, "steps": "\n".join(
        f"{s.name}: {s.params!r}" + (f" given {s.given}" if s.given else "") for s in steps)})


def run_steps(label: str, found: Build, to_run: list[planner.Step], preset_name: str) -> str:
    """The steps by the sequential executor under one run of this entry point; the last target's run id."""
    import mlflow

    from distill.pipeline import Steps, gpus, main_run, walk
    from distill.pipeline.steps import step_server

    visible = []
    if any(s.gpus for s in to_run):  # only then: a CPU preset never imports torch here
        visible = gpus.visible()
        gpus.check_fits(to_run, visible)
    targets = [t.name for t in found.targets]
    params = {"entry_point": label, "targets": "; ".join(targets)[:6000], "steps": len(found.steps)}
    t0 = time.perf_counter()
    with step_server() as ctx, main_run.parent_run(f"{label}-{preset_name}", params, build_key(label, found.steps),
                                                   {lineage.ENTRY_POINT: label}) as parent:
        step = Steps(ctx, parent.run_id, visible, label=label)
        done = walk(step, found.steps)
        seconds = time.perf_counter() - t0
        main_run.record(parent, step.log, seconds)
        reused = sum(s["reused"] for s in step.log)
        n = len(step.log)
        mlflow.set_tags({"mlflow.runName": f"{label}-{preset_name}"
                                           + (f" (reused {reused} of {n} steps)" if reused else ""),
                         "mlflow.note.content": note(label, preset_name, targets, step.log, parent.experiment_id,
                                                     found.used)})
        console.info(f"{label}: {n} steps, {reused} reused, {seconds:.0f}s; "
                     + ", ".join(f"{t} {done[t]}" for t in targets))
        return done[targets[-1]]


def note(label: str, preset_name: str, targets: list[str], log: list[dict], experiment_id: str, used=()) -> str:
    """The entry point's run description (Markdown): what it was asked for, the runs it built on, every step's run."""
    from distill.pipeline.main_run import run_link

    out = [f"**distill `-e {label}`**, preset `{preset_name}`: " + ", ".join(f"`{t}`" for t in targets)
           + ", and what it needs.", "", "| step | run | |", "|---|---|---|"]
    for step, u in used:
        out.append(f"| {step.name} | {run_link(u.run_id[:8], experiment_id, u.run_id)} | used: yours, already there |")
    for s in log:
        what = "reused (an earlier run)" if s["reused"] else f"ran, {s['seconds']:.0f}s"
        out.append(f"| {s['step']} | {run_link(s['run_id'][:8], experiment_id, s['run_id'])} | {what} |")
    return "\n".join(out)

