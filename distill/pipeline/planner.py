"""The steps of `main`, written once: each with its phase, parameters, inputs and GPU need.

translate -> each teacher -> the teachers' own evaluations -> select -> sft for every teacher x student x
seed -> evaluate each student -> 4-shot baselines -> errors (when a judge is configured) -> tokens -> report.
Both executors walk this one plan: the sequential one (distill/pipeline/__init__.py) in its order, the Ray one
(distill/pipeline/executors.py) as a graph. A step's input fields are left empty here and filled with the run ids
of the steps named in `inputs` once those have run or been reused (`Step.filled`).

For a tool that builds one target and what it needs (`-e sft` with its upstream): `upstream(steps, names)`
is the target and every step it depends on, in plan order, and `pending(steps, finished_run)` says, given
what is finished in the tracking store, which of them must run and which are reused (see their docstrings).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from distill import DistillError


@dataclass
class Step:
    """One node of the grid: a phase, its parameters, where its upstream run ids come from, its GPUs."""

    name: str                                               # `sft 7B -> qwen2.5-0.5b (seed 42)`: console, steps.json
    phase: str                                              # the entry point: translate, teacher, evaluate, ...
    params: Any                                             # the phase's *Params, input fields empty
    inputs: dict[str, list[str]] = field(default_factory=dict)  # params field -> steps whose run ids fill it
    after: list[str] = field(default_factory=list)          # steps that must finish first, ids not needed
    gpus: int = 0                                           # GPUs its process gets (CUDA_VISIBLE_DEVICES)
    given: dict[str, str] = field(default_factory=dict)     # step -> a FINISHED run used in its place (users_runs)

    @property
    def needs(self) -> list[str]:
        """The steps that must run (or be found finished) first; a step whose run is given is not one."""
        return [d for d in [*(d for deps in self.inputs.values() for d in deps), *self.after] if d not in self.given]

    def filled(self, run_ids: dict[str, str]) -> Any:
        """The parameters with each input field set to its steps' run ids (comma-joined, in order)."""
        ids = {**self.given, **run_ids}
        return dataclasses.replace(self.params, **{f: ",".join(ids[d] for d in deps)
                                                   for f, deps in self.inputs.items()})


@dataclass(frozen=True)
class Grid:
    """What `main` runs, resolved and checked before any step starts."""

    preset: Any            # distill.config.preset.Preset
    teachers: list[str]
    students: list[str]
    seeds: list[int]
    backend: str
    limit: int | None      # evaluation questions per evaluation
    judge: bool            # a judge is configured: the errors steps run


def _names(given: list[str], default: list) -> list[str]:
    return list(given) if given else [str(x) for x in default]


def parse_seeds(text: list[str], default: list) -> list[int]:
    """`1,2,3` -> [1, 2, 3]; anything else is one line naming the bad item."""
    from distill.config.checks import SEED, check

    seeds = []
    for item in _names(text, default):
        try:
            seeds.append(int(item))
        except ValueError:
            raise DistillError(f"seeds must be comma-separated integers like 1,2,3 "
                               f"(got {item!r} in {','.join(map(str, text))!r})") from None
        check(SEED, "seeds", seeds[-1])
    return seeds


def resolve_grid(p, who: str = "main", hardware: bool = True) -> Grid:
    """The grid of `main`'s parameters (distill.pipeline.MainParams): names checked against the preset.
    `who` names the command in the refusals; `hardware`: refuse a GPU preset on a machine without a GPU now
    (an entry point that builds its upstream checks only the steps it will run: gpus.check_fits)."""
    from distill.config.models import resolve_names
    from distill.config.presets import load_preset
    from distill.pipeline.gpus import check_hardware

    preset = load_preset(p.preset)
    grid = preset.grid
    # in the preset's spelling (`7b` -> `7B`): the steps' parameters, tags and cache keys use these names
    teachers = resolve_names(_names(p.teachers, grid.teachers or list(preset.teachers)), preset, "teacher", "teachers")
    students = resolve_names(_names(p.students, grid.students or list(preset.students)), preset, "student", "students")
    seeds = parse_seeds(p.seeds, grid.seeds)
    if len(teachers) < 2:
        raise DistillError(f"{who} needs at least two teachers to select questions on (got {teachers})")
    backend = p.backend or preset.backend
    if hardware:
        check_hardware(preset, backend, p.rehearsal)
    limit = p.limit if p.limit is not None else grid.eval_limit
    judge = bool(p.judge_base_url or os.environ.get("OPENAI_API_KEY") or preset.judge.base_url)
    return Grid(preset, teachers, students, seeds, backend, limit, judge)


def main_params(p, grid: Grid) -> dict[str, Any]:
    """The params of the `main` run, whichever executor runs it."""
    return {"preset": grid.preset.name, "teachers": ",".join(grid.teachers), "students": ",".join(grid.students),
            "seeds": ",".join(map(str, grid.seeds)), "limit": grid.limit, "train_limit": p.train_limit, "n": p.n,
            "backend": grid.backend, "judge": grid.judge, "max_new_tokens": p.max_new_tokens,
            "rehearsal": p.rehearsal, "executor": p.executor}



def gpus_for_generation(preset, backend: str, tensor_parallel_size: int, rehearsal: bool = False) -> int:
    """GPUs of a generating step: the model's tensor-parallel size for vLLM (none on vLLM's CPU platform) and for
    transformers on a GPU preset (which spreads a model too large for one GPU over them: hf.load_placement)."""
    if backend == "vllm":
        from distill.generation.vllm_platform import on_cpu_platform

        return 0 if on_cpu_platform() else int(tensor_parallel_size)
    if backend == "transformers" and preset.needs_gpu and not rehearsal:
        return max(1, int(tensor_parallel_size or 1))
    return 0  # openai: the server does the work; transformers on a CPU preset, or on rehearsal's stand-ins


def sft_gpu_count(preset, rehearsal: bool = False) -> int:
    """GPUs of an SFT step: one where the preset needs a GPU (each student on its own), else none."""
    return 1 if preset.needs_gpu and not rehearsal else 0


def sft_name(teacher: str, student: str, seed) -> str:
    return f"sft {teacher} -> {student} (seed {seed})"


def step(name: str, phase: str, inputs: dict[str, list[str]] | None = None, gpus: int = 0,
         after: list[str] | None = None, **params) -> Step:
    """A step of `phase` (distill.phases.contract) with these parameters; each input it names is one of the
    phase's input parameters, left empty until the steps it names have run."""
    from distill.phases.contract import phase as phase_of

    this, inputs = phase_of(phase), inputs or {}
    if set(inputs) - set(this.inputs):
        raise ValueError(f"{phase} takes its inputs in {this.inputs}, not {sorted(set(inputs) - set(this.inputs))}")
    return Step(name, phase, this.code.params(**dict.fromkeys(inputs, ""), **params), inputs=inputs,
                after=after or [], gpus=gpus)


def sft_step(teacher: str, student: str, seed: int, common: dict, gpus: int) -> Step:
    """One SFT cell of the grid, fed the `select` step's run: `main`'s, and what an entry point builds
    for a student it needs (a teacher mix `7B+72B` included)."""
    return step(sft_name(teacher, student, seed), "sft", {"select_run": ["select"]}, gpus,
                teacher=teacher, student=student, seed=seed, **common)


def plan(p, grid: Grid) -> list[Step]:
    """Every step of the grid, in the sequential executor's order, with its inputs and GPUs."""
    from distill.config.models import resolve_role

    preset, teachers, students, seeds, limit = grid.preset, grid.teachers, grid.students, grid.seeds, grid.limit
    common = dict(preset=p.preset, reuse=p.reuse)
    gen = dict(backend=p.backend, max_new_tokens=p.max_new_tokens)
    default_tp = int(preset.tensor_parallel_size or 1)
    tp = {t: resolve_role(t, preset, "teacher").tensor_parallel_size for t in teachers}
    tp |= {s: resolve_role(s, preset, "student").tensor_parallel_size for s in students}
    translator_tp = int(preset.translator.tensor_parallel_size or default_tp)
    gpu = lambda n: gpus_for_generation(preset, grid.backend, n, p.rehearsal)  # noqa: E731
    sft_gpus = sft_gpu_count(preset, p.rehearsal)
    steps = [step("translate", "translate", gpus=gpu(translator_tp), limit=p.train_limit, **gen, **common)]
    steps += [step(f"teacher {t}", "teacher", {"translation_run": ["translate"]}, gpu(tp[t]), teacher=t, **gen,
                   **common) for t in teachers]
    steps += [step(f"evaluate teacher {t}", "evaluate", gpus=gpu(tp[t]), model=t, limit=limit, **gen, **common)
              for t in teachers]
    steps.append(step("select", "select", {"teacher_runs": [f"teacher {t}" for t in teachers]}, n=p.n, **common))
    cells = []
    for t in teachers:
        for s in students:
            for seed in seeds:
                sft, ev = sft_name(t, s, seed), f"evaluate {s} <- {t} (seed {seed})"
                steps.append(sft_step(t, s, seed, common, sft_gpus))
                steps.append(step(ev, "evaluate", {"model": [sft]}, gpu(default_tp), limit=limit, **gen, **common))
                cells.append((t, s, seed, ev))
    steps += [step(f"baseline {s} (4-shot)", "evaluate", gpus=gpu(tp[s]), model=s, mode="few-shot", limit=limit,
                   **gen, **common) for s in students]
    if grid.judge:
        judged = [t for t in preset.judge.teachers if t in teachers] or teachers
        steps += [step(f"errors {s} <- {t} (seed {seed})", "errors", {"eval_run": [ev]}, judge_model=p.judge_model,
                       judge_base_url=p.judge_base_url, **common) for t, s, seed, ev in cells if t in judged]
    steps.append(step("tokens", "tokens", {"select_run": ["select"]}, **common))
    steps.append(step("report", "report", after=[s.name for s in steps], preset=p.preset, teachers=",".join(teachers),
                      students=",".join(students), seeds=",".join(map(str, seeds)), reuse=p.reuse))
    return steps


def upstream(steps: list[Step], targets: Iterable[str]) -> list[Step]:
    """The named steps and every step they need, directly or not, in plan order (`sft 7B -> s (seed 1)`:
    translate, each teacher, select, that sft). An unknown name is refused with the known ones."""
    by_name = {s.name: s for s in steps}
    todo = list(targets)
    unknown = [t for t in todo if t not in by_name]
    if unknown:
        raise DistillError(f"no step named {', '.join(map(repr, unknown))} in this grid; its steps: "
                           f"{', '.join(by_name)}")
    wanted: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(by_name[name].needs)
    return [s for s in steps if s.name in wanted]


@dataclass
class Pending:
    """A step of a plan, given what is finished: the run to reuse, or None where it must run."""

    step: Step
    reuse: str | None


def pending(steps: list[Step], probe: Callable[[Step, Any], str | None]) -> list[Pending]:
    """Which of `steps` (in plan order, e.g. from `upstream`) must run and which are finished. A step
    whose inputs are all finished is asked `probe(step, filled params)` for the id of a FINISHED run of
    the same work (tracking's cache key: parameters, input run ids, code), None if there is none; a step
    fed by a step that must run must run too (its inputs will be new runs), and is not asked."""
    out, done = [], {}
    for s in steps:
        if all(d in done for d in s.needs):
            run_id = probe(s, s.filled(done))
            if run_id:
                done[s.name] = run_id
            out.append(Pending(s, run_id))
        else:
            out.append(Pending(s, None))
    return out


def finished_run(step: Step, params: Any) -> str | None:
    """The id of a FINISHED run of this step's work (the phase's own reuse check under phase_runs.REUSE_ONLY:
    same parameters, input run ids and code; no model is loaded), None where the step must run. It writes
    nothing (phase_runs.LOOK_ONLY): no pointer run, no tag, inside a run or outside any."""
    from distill.phases.contract import phase
    from distill.tracking import phase_runs

    phase_runs.REUSE_ONLY = phase_runs.LOOK_ONLY = True
    try:
        return phase(step.phase).code.run(params)
    except phase_runs.NotReused:
        return None
    finally:
        phase_runs.REUSE_ONLY = phase_runs.LOOK_ONLY = False
