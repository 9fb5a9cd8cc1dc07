"""The runs already in the store that an entry point builds on instead of making its own: the translation and
teacher runs a user made by hand (`-e translate -P limit=16`, then `-e teacher -P teacher=7B`) are what `-e select`
uses; only a teacher with no run on that translation is run, on it.

What fits is what the phases read themselves when they are not given an input:
- the translation: the newest FINISHED `translate` run of the preset (what `teacher` and `select` read), whatever
  its limit, translator or source: the user made it to be used;
- a teacher: the newest FINISHED run of that teacher on this translation (what `select` reads);
a run whose files are gone is not one (artifacts_present). A selection of more questions (`n`) than that translation
has is refused before any teacher runs on it: it could only fail after them.
An entry point whose command sets the upstream's own settings asked for particular runs: it uses only runs of
exactly that work, by their cache keys, as `main` does (`train_limit`, `backend`, `max_new_tokens`: the translation
and the teachers; those and `n`: the selection). `main` and `report` build the preset's full grid: a translation made
with another limit never stands in for it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from distill.tracking import lineage

# the grid parameters of an entry point (contract.Phase.grid_params) that say which upstream runs are wanted
GENERATION = ("train_limit", "backend", "max_new_tokens")   # of the translation and the teachers' answers
SELECTION = (*GENERATION, "n")                               # of a selection


@dataclass(frozen=True)
class Used:
    """A FINISHED run used in place of one of the grid's steps."""

    step: str      # the step it stands for: `translate`, `teacher 7B`
    run_id: str
    line: str      # what the console says of it: `translation run <id> (16 questions) from <date>`
    size: int | None = None  # a translation's questions


def settings_given(up, knobs: tuple[str, ...], settings: tuple[str, ...] = GENERATION) -> list[str]:
    """Of these settings, those the command sets (`train_limit=16`): then only runs of exactly that work fit."""
    return [k for k in settings if k in knobs and getattr(up, k) not in (None, "")]


def made(run) -> str:
    """When a run started, in UTC, to the minute."""
    when = datetime.datetime.fromtimestamp(run.info.start_time / 1000, tz=datetime.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def size(run) -> int | None:
    n = run.data.params.get("n_questions") or run.data.metrics.get("n_total")
    return int(float(n)) if n is not None else None


def translation_and_teachers(preset_name: str, teachers: list[str], look_only: bool = False) -> dict[str, Used]:
    """Step name -> the run that fits it: the newest FINISHED translation of the preset and, of these teachers, the
    newest FINISHED run of each on it. Empty when there is no translation. A run whose files are gone is not used
    (artifacts_present; set aside unless `look_only`, a plan)."""
    from distill.tracking.artifacts_present import still_whole

    translation = next((r for r in lineage.search_phase_runs("translate", status="FINISHED",
                                                             params={"preset": preset_name}, max_results=20)
                        if still_whole("translate", r, look_only=look_only)), None)
    if translation is None:
        return {}
    tid, n = translation.info.run_id, size(translation)
    out = {"translate": Used("translate", tid, f"translation run {tid}{f' ({n} questions)' if n is not None else ''} "
                                               f"from {made(translation)}", n)}
    for run in lineage.teacher_runs_of(tid):
        teacher = run.data.tags.get(lineage.TEACHER)
        if teacher in teachers and still_whole("teacher", run, look_only=look_only):
            out[f"teacher {teacher}"] = Used(f"teacher {teacher}", run.info.run_id,
                                             f"teacher {teacher} run {run.info.run_id} from {made(run)}")
    return out


def check_selection_fits(translation: Used, select_params, preset, allow_fewer_too: bool) -> None:
    """A selection of more questions than the user's translation has cannot succeed: refused before any teacher
    runs on it (a 70B teacher runs for hours), not after. `allow_fewer_too`: the command takes `allow_fewer`."""
    from distill import DistillError
    from distill.config.params import resolve

    p = resolve(select_params, preset)
    if translation.size is None or p.allow_fewer or p.n <= translation.size:
        return
    raise DistillError(f"n={p.n} questions to select, but your translation run {translation.run_id} has only "
                       f"{translation.size}: pass n={translation.size} or fewer"
                       + (" (or allow_fewer=true)" if allow_fewer_too else "")
                       + ", or train_limit=<N> to build a translation of N questions")
