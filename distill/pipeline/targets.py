"""What each entry point is asked to build, as steps of `main`'s grid, and what those steps need.

An entry point builds only what is missing: an input it is not given is first looked up as the phase itself looks it
up (the newest FINISHED translation, teacher runs, selection with its teachers), and only where there is none does
the planner build it; a translation and teacher runs found stand in for the grid's steps (users_runs: a teacher
with no run on the user's translation is run on it). A command that sets the upstream's settings (`train_limit`,
`backend`, `max_new_tokens`; for a selection `n` too) does not look them up: it reuses only runs of exactly that
work, as `main` does. An entry point's targets are steps named and made as distill.pipeline.planner makes them,
with the entry point's own parameters; they take the place of the grid's steps of the same name, and
planner.upstream gives what they need. The grid they come from is the one `main` would run with the same names, so a
step built here is the step `main` builds (same parameters, same cache key): whichever runs first, the other reuses
it.

Each entry point's targets, then what they need (unless the input is given):

- `sft -P teacher=T`: `sft T -> s (seed k)` for each student s of the grid (`student=` narrows) and seed k
  (`seed=`); translate, each teacher of the selection (the grid's plus T), select (`select_run=`/`train_file=`:
  nothing).
- `evaluate -P model=M`: `evaluate M`; for `models:/<student>@teacher-T[-seed<k>]` not registered yet, that
  student's sft and its upstream; for any other model (a teacher, a base model, an sft run id, a registered
  version), nothing.
- `teacher -P teacher=T`: `teacher T`; translate (`translation_run=`: nothing).
- `select`: `select`; translate, each teacher of the grid (`teacher_runs=`: nothing).
- `tokens`: `tokens`; translate, each teacher, select (`select_run=`: nothing).
- `report`: `report`; the whole grid: teachers and their evaluations, every sft cell and its evaluation, the 4-shot
  baselines, the judge where one is configured, tokens.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from distill.config.models import resolve_model, resolve_names, resolve_role
from distill.config.params import param, same_as
from distill.config.params_text import lists_from_text
from distill.config.presets import load_preset
from distill.phases.contract import phase as phase_of
from distill.pipeline import MainParams, planner, users_runs
from distill.pipeline.planner import Step
from distill.tracking import artifacts_present, lineage

# What every entry point that builds its upstream takes besides its grid parameters (contract.Phase.grid_params).
BUILD_OPTIONS = ("plan", "upstream")


def grid_params(phase: str) -> tuple[str, ...]:
    return phase_of(phase).grid_params


@dataclass
class UpstreamParams:
    """How an entry point builds what it needs (distill.pipeline.upstream): BUILD_OPTIONS and its grid parameters
    (contract.Phase.grid_params)."""

    plan: bool = param(False, help="`true`: print the steps it would run and those it reuses, then stop")
    upstream: bool = param(True, help="`false`: this phase only; a missing input is refused (one step per job)")
    teachers: list[str] = same_as(MainParams, "teachers")  # the selection's teachers
    limit: int | None = same_as(MainParams, "limit")
    train_limit: int | None = same_as(MainParams, "train_limit")
    n: int | None = same_as(MainParams, "n")
    backend: str = same_as(MainParams, "backend")      # of the upstream generation steps
    max_new_tokens: int | None = same_as(MainParams, "max_new_tokens")
    judge_model: str = same_as(MainParams, "judge_model")
    judge_base_url: str = same_as(MainParams, "judge_base_url")

    __post_init__ = lists_from_text


@dataclass
class Build:
    """The targets of an entry point and every step they need (the targets included), in plan order."""

    targets: list[Step]
    steps: list[Step]
    used: list[tuple[Step, users_runs.Used]] = field(default_factory=list)  # runs in place of steps, not run
    order: list[str] = field(default_factory=list)  # every step's name, the used ones too, in plan order

    def status(self, pending: list[planner.Pending]) -> list[planner.Pending]:
        """planner.pending's answer for `steps`, with the runs used in place of steps as reused, in plan order."""
        rows = {x.step.name: x for x in pending} | {s.name: planner.Pending(s, u.run_id) for s, u in self.used}
        return [rows[n] for n in self.order or [s.name for s in self.steps] if n in rows]


def upstream_reuse(reuse):
    """Upstream steps are reused when finished, whatever `reuse` says of the target (`reuse=false` redoes the
    target, not the translation); `ignore_code` carries over to them."""
    from distill.config.params_text import IGNORE_CODE

    return IGNORE_CODE if reuse == IGNORE_CODE else True


def _alone(target: Step) -> Build:
    """A target whose inputs are given (or that has none): nothing upstream."""
    target.inputs = {}
    return Build([target], [target])


def _grid(phase: str, p, up: UpstreamParams, teachers=(), students=(), seeds=()) -> list[Step]:
    """`main`'s plan of the grid of these names and the entry point's grid parameters. The entry point's own parameters
    are its target's alone (`-e evaluate -P max_new_tokens=` is the evaluation's, not its teachers')."""

    knobs = {k: getattr(up, k) for k in ("limit", "train_limit", "n", "backend", "max_new_tokens", "judge_model",
                                         "judge_base_url") if k in grid_params(phase)}
    mp = MainParams(preset=p.preset, teachers=list(teachers), students=list(students), seeds=[str(s) for s in seeds],
                    reuse=upstream_reuse(p.reuse), **knobs)
    return planner.plan(mp, planner.resolve_grid(mp, who=f"{phase} (the selection of questions)", hardware=False))


def _build(plan: list[Step], targets: list[Step], extra: list[Step] = (),
           used: dict[str, users_runs.Used] | None = None) -> Build:
    """The targets (and extra steps) in place of the plan's steps of the same name, and what they need; a step
    with a run in `used` is not run: the steps it feeds are given that run."""
    mine = {s.name: s for s in [*extra, *targets]}
    merged = [mine.pop(s.name, s) for s in plan] + list(mine.values())
    names = [t.name for t in targets]
    needed = planner.upstream(merged, names)
    used = {n: u for n, u in (used or {}).items() if n not in names and any(s.name == n for s in needed)}
    if not used:
        return Build(targets, needed)
    for s in needed:
        s.given = {d: used[d].run_id for d in [*(d for deps in s.inputs.values() for d in deps), *s.after]
                   if d in used}
    kept = planner.upstream([s for s in needed if s.name not in used], names)  # what only a used step needed goes too
    selection = next((s for s in kept if s.phase == "select"), None)
    if selection is not None and "translate" in used:
        users_runs.check_selection_fits(used["translate"], selection.params, load_preset(selection.params.preset),
                                        allow_fewer_too=selection in targets)
    return Build(targets, kept, [(s, used[s.name]) for s in needed if s.name in used], [s.name for s in needed])


def _users(phase: str, preset, up: UpstreamParams, teachers: list[str]) -> dict[str, users_runs.Used]:
    """The translation and teacher runs that fit (users_runs), unless the command sets the upstream's settings."""
    if users_runs.settings_given(up, grid_params(phase)):
        return {}
    return users_runs.translation_and_teachers(preset.name, teachers, look_only=up.plan)


def _in_plan(plan: list[Step], name: str) -> Step:
    return next(s for s in plan if s.name == name)


def _selection(preset, given: list[str], add: list[str] = ()) -> list[str]:
    """The teachers selection uses: the given ones (else the grid's), plus `add`, in the preset's order."""
    names = resolve_names(given or list(preset.grid.teachers or preset.teachers), preset, "teacher", "teachers")
    names += [t for t in add if t not in names]
    order = {t: i for i, t in enumerate(preset.teachers)}
    return sorted(names, key=lambda t: order.get(t, len(order)))


def grid_seeds(preset) -> list[int]:
    from distill.phases.sft import default_seed

    return [int(s) for s in preset.grid.seeds] or [default_seed(preset)]


def _finished(phase: str, preset) -> str:
    """The newest FINISHED run of a phase under this preset, as the phase finds its input itself; "" if none."""
    run = lineage.newest_finished(phase, params={"preset": preset.name})
    return run.info.run_id if run else ""


def sft(p, up: UpstreamParams) -> Build:
    from distill.config.names import teacher_names
    from distill.phases.sft import canonical_teacher

    preset = load_preset(p.preset)
    teacher = canonical_teacher(p.teacher, preset, labels=bool(p.train_file))
    looks_up = not users_runs.settings_given(up, grid_params("sft"), users_runs.SELECTION)
    if not (p.select_run or p.train_file) and looks_up:  # a selection with this teacher's set (and `teachers=`'s)
        wanted = _selection(preset, up.teachers, teacher_names(teacher)) if up.teachers else teacher_names(teacher)
        found = lineage.select_run_for(wanted, preset.name)
        if found is not None and not artifacts_present.still_whole("select", found):  # set aside: selected again
            found = None
        p = dataclasses.replace(p, select_run=found.info.run_id) if found is not None else p
    students = ([resolve_role(p.student, preset, "student").name] if p.student
                else list(preset.grid.students or preset.students))
    seeds = [p.seed] if p.seed is not None else grid_seeds(preset)
    targets = [Step(planner.sft_name(teacher, s, seed), "sft",
                    dataclasses.replace(p, teacher=teacher, student=s, seed=seed),
                    inputs={"select_run": ["select"]}, gpus=planner.sft_gpu_count(preset))
               for s in students for seed in seeds]
    if p.select_run or p.train_file:
        for t in targets:
            t.inputs = {}
        return Build(targets, targets)
    teachers = _selection(preset, up.teachers, teacher_names(teacher))
    return _build(_grid("sft", p, up, teachers, students, seeds), targets, used=_users("sft", preset, up, teachers))


def _evaluated_tp(p, preset, backend: str) -> int:
    if p.tensor_parallel_size:
        return int(p.tensor_parallel_size)
    from distill import DistillError

    try:
        return resolve_model(p.model, preset, served=backend == "openai").tensor_parallel_size
    except DistillError:  # the phase says what is wrong with the name, in its own words
        return int(preset.tensor_parallel_size or 1)


def student_to_build(model: str, preset) -> tuple[str, str, int | None] | None:
    """(teacher, student, seed or None) of `models:/<registered student>@teacher-<T>[-seed<k>]` (the names
    `sft` registers under this preset) when that alias is not registered yet; None for any other model."""
    from distill.tracking.registry import alias_for, registered_name

    m = re.fullmatch(r"models:/([^@/]+)@([\w.\-]+)", model.strip())
    if not m:
        return None
    name, alias = m.groups()
    student = next((s for s in preset.students if registered_name(s, preset.name) == name), None)
    seed_alias = re.fullmatch(r"(.+)-seed(\d+)", alias)
    teacher_alias, seed = (seed_alias.group(1), int(seed_alias.group(2))) if seed_alias else (alias, None)
    names = list(preset.teachers)
    teacher = next((t for t in names + [f"{a}+{b}" for a in names for b in names if a != b]
                    if alias_for(t) == teacher_alias.lower()), None)
    if student is None or teacher is None:
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().get_model_version_by_alias(name, alias)
        return None  # registered: evaluate it as it is
    except MlflowException:
        return teacher, student, seed


def evaluate(p, up: UpstreamParams) -> Build:
    from distill.config.names import teacher_names

    preset = load_preset(p.preset)
    backend = p.backend or preset.backend
    target = Step(f"evaluate {p.model}", "evaluate", p,
                  gpus=planner.gpus_for_generation(preset, backend, _evaluated_tp(p, preset, backend)))
    cell = student_to_build(p.model, preset)
    if cell is None:
        return _alone(target)
    teacher, student, seed = cell
    seed = seed if seed is not None else grid_seeds(preset)[0]
    trained = planner.sft_step(teacher, student, seed, dict(preset=p.preset, reuse=upstream_reuse(p.reuse)),
                               planner.sft_gpu_count(preset))
    target.inputs = {"model": [trained.name]}  # the sft run it trains: a smoke run (train_limit, n) moves no alias
    teachers = _selection(preset, up.teachers, teacher_names(teacher))
    plan = _grid("evaluate", p, up, teachers, [student], [seed])
    return _build(plan, [target], extra=[trained], used=_users("evaluate", preset, up, teachers))


def teacher(p, up: UpstreamParams) -> Build:
    preset = load_preset(p.preset)
    backend = p.backend or preset.backend
    ref = resolve_role(p.teacher, preset, "teacher", served=backend == "openai")
    target = Step(f"teacher {ref.name}", "teacher", dataclasses.replace(p, teacher=ref.name),
                  inputs={"translation_run": ["translate"]},
                  gpus=planner.gpus_for_generation(preset, backend,
                                                   p.tensor_parallel_size or ref.tensor_parallel_size))
    if p.translation_run:
        return _alone(target)
    return _build(_grid("teacher", p, up), [target], used=_users("teacher", preset, up, []))


def select(p, up: UpstreamParams) -> Build:
    preset = load_preset(p.preset)
    if p.teacher_runs:
        return _alone(Step("select", "select", p))
    teachers = _selection(preset, up.teachers)
    plan = _grid("select", p, up, teachers)
    return _build(plan, [Step("select", "select", p, inputs=_in_plan(plan, "select").inputs)],
                  used=_users("select", preset, up, teachers))


def tokens(p, up: UpstreamParams) -> Build:
    preset = load_preset(p.preset)
    if (not p.select_run and not users_runs.settings_given(up, grid_params("tokens"), users_runs.SELECTION)
            and (found := _finished("select", preset))):
        p = dataclasses.replace(p, select_run=found)
    if p.select_run:
        return _alone(Step("tokens", "tokens", p))
    teachers = _selection(preset, up.teachers)
    plan = _grid("tokens", p, up, teachers)
    return _build(plan, [Step("tokens", "tokens", p, inputs=_in_plan(plan, "tokens").inputs)],
                  used=_users("tokens", preset, up, teachers))


def report(p, up: UpstreamParams) -> Build:
    """The report of the grid (its `teachers`, `students`, `seeds`, else the preset's grid), after all of it."""
    plan = _grid("report", p, up, p.teachers, p.students, p.seeds)
    grid = _in_plan(plan, "report")
    mine = dataclasses.replace(p, teachers=grid.params.teachers, students=grid.params.students,
                               seeds=grid.params.seeds)
    return _build(plan, [Step("report", "report", mine, after=grid.after)])


BUILDERS = {"sft": sft, "evaluate": evaluate, "teacher": teacher, "select": select, "tokens": tokens, "report": report}


def build(phase: str, p, up: UpstreamParams) -> Build:
    """What `-e <phase>` with these parameters builds: its targets and every step they need."""
    return BUILDERS[phase](p, up)
