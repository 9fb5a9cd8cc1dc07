"""One contract for every phase: what the CLI, the planner, the parameter docs and MLproject's test read of it.

MLproject's entry points are these phases and `main`, the grid over them, declared with the same `Phase` in
distill.pipeline (distill.entry_points has both).

A phase is its entry point's name, the `*Params` dataclass whose fields are that entry point's parameters, `run`
(params -> the run id it made or reused), how it resolves its settings against the preset and keys its work, the
parameters that take upstream run ids, and which of `main`'s grid parameters it takes for what it builds first.
Nothing is looked up by a naming convention: each phase's parts are named below, imported when first asked for (the
CLI of one phase imports no other phase, and `main`'s process imports no torch).

To add a phase: its module under distill/phases/ (a `*Params` dataclass of `param()` fields and `run`), a line in
distill.phases.MODULES, a `_load_*` function and a PHASES entry here, a script in entrypoints/ and an entry in
MLproject; tests/test_contract.py checks that they agree (docs/development.md, "Adding a phase").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from distill.phases import MODULES


@dataclass(frozen=True)
class PhaseCode:
    """A phase's functions and parameters, imported on first use (contract.Phase.code)."""

    params: type                                    # the entry point's parameters (distill/config/params.py)
    run: Callable[[Any], Any]                       # params -> the run id made or reused (`main`: its run)
    reuse_key: Callable[..., dict]                  # the payload its cache key hashes (distill.tracking.cache_keys)
    resolve_settings: Callable[..., Any] | None = None  # (params, preset) -> the settings it runs with; pure
    preflight: Callable[..., Any] | None = None     # what `run` would refuse, asked before its upstream is built
    prepare: Callable[[Any], None] | None = None    # work started before the tracking store is set up


@dataclass(frozen=True)
class Phase:
    """One entry point of MLproject and the `distill.phase` tag of its runs."""

    name: str
    load: Callable[[], PhaseCode] = field(repr=False)  # imports the phase's module, names its parts
    inputs: tuple[str, ...] = ()       # parameters that take upstream run ids: the planner fills them
    grid_params: tuple[str, ...] = ()  # `main`'s parameters it takes for what it builds first; () builds nothing
    trains: bool = False               # may train a student: the preset's `sft:` block is checked before any work
    own_process: bool = False          # loads a model: under `main` it runs in a step process of its own

    @property
    def module(self) -> str:
        return MODULES[self.name]

    @property
    def code(self) -> PhaseCode:
        return _code(self)

    @property
    def builds_upstream(self) -> bool:
        """It builds what it needs first (distill.pipeline.upstream) unless told `upstream=false`."""
        return bool(self.grid_params)


def _load_translate() -> PhaseCode:
    from distill.phases import translate as m

    return PhaseCode(m.TranslateParams, m.run, m.reuse_key, m.resolve_settings)


def _load_teacher() -> PhaseCode:
    from distill.phases import teacher as m

    return PhaseCode(m.TeacherParams, m.run, m.reuse_key, m.resolve_settings)


def _load_select() -> PhaseCode:
    from distill.phases import select as m

    return PhaseCode(m.SelectParams, m.run, m.reuse_key, m.resolve_settings)


def _load_sft() -> PhaseCode:
    from distill.phases import sft as m

    return PhaseCode(m.SftParams, m.run, m.reuse_key, m.resolve_settings, preflight=m.preflight)


def _load_evaluate() -> PhaseCode:
    from distill.phases import evaluate as m

    return PhaseCode(m.EvaluateParams, m.run, m.reuse_key, m.resolve_settings, preflight=m.preflight)


def _load_errors() -> PhaseCode:
    from distill.phases import errors as m

    return PhaseCode(m.ErrorsParams, m.run, m.reuse_key, m.resolve_settings)


def _load_tokens() -> PhaseCode:
    from distill.phases import tokens as m

    return PhaseCode(m.TokensParams, m.run, m.reuse_key, m.resolve_settings)


def _load_report() -> PhaseCode:
    from distill.phases import report as m

    return PhaseCode(m.ReportParams, m.run, m.reuse_key, m.resolve_settings)


def _load_sweep() -> PhaseCode:
    from distill.phases import sweep as m

    return PhaseCode(m.SweepParams, m.run, m.reuse_key, m.resolve_settings, prepare=m.prepare)


# The entry points, in the order the docs describe them. A grid parameter the entry point has itself keeps its own
# meaning and is its target's alone (`limit` of `sft`, `backend` of `evaluate`), except `teachers`, `students`,
# `seeds` of `report`, which are the grid it reports on.
PHASES: dict[str, Phase] = {p.name: p for p in (
    Phase("translate", _load_translate, own_process=True),
    Phase("teacher", _load_teacher, inputs=("translation_run",), grid_params=("train_limit",), own_process=True),
    Phase("select", _load_select, inputs=("teacher_runs",),
          grid_params=("teachers", "train_limit", "backend", "max_new_tokens")),
    Phase("sft", _load_sft, inputs=("select_run",), grid_params=("teachers", "train_limit", "n", "backend",
                                                                 "max_new_tokens"), trains=True, own_process=True),
    Phase("evaluate", _load_evaluate, inputs=("model",), grid_params=("teachers", "train_limit", "n"), trains=True,
          own_process=True),
    Phase("errors", _load_errors, inputs=("eval_run",)),
    Phase("tokens", _load_tokens, inputs=("select_run",),
          grid_params=("teachers", "train_limit", "n", "backend", "max_new_tokens"), own_process=True),
    Phase("report", _load_report, grid_params=("limit", "train_limit", "n", "backend", "max_new_tokens",
                                               "judge_model", "judge_base_url"), trains=True),
    Phase("sweep", _load_sweep, inputs=("select_run",), trains=True),
)}
NAMES = tuple(PHASES)


def phase(name: str) -> Phase:
    """The phase of an entry point; an unknown name is refused with the known ones."""
    try:
        return PHASES[name]
    except KeyError:
        from distill import DistillError

        raise DistillError(f"no phase named {name!r}; the phases are {', '.join(NAMES)}") from None


@cache
def _code(phase: Phase) -> PhaseCode:
    return phase.load()
