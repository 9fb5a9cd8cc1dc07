"""What the report covers: its input runs found by tags in the active experiment and read once.

Evaluations (students, untrained baselines, teachers), errors runs, the tokens run, and the
predictions.jsonl of evaluations the paired tests need. Nothing here fails on a missing input.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from distill import DistillError
from distill.tracking import lineage, phase_runs

CUT = "cut_at_next_question"
# (judge letter, metric stem, label); metrics are `errors_<stem>` (count) and `errors_<stem>_frac`
CATEGORIES = [("A", "semantic", "(A) Semantic misunderstanding"),
              ("B", "step_missing", "(B) Step missing"),
              ("C", "calculation", "(C) Calculation error")]


@dataclass
class EvalRun:
    run_id: str
    teacher: str
    student: str
    seed: str
    accuracy: float
    ci_low: float
    ci_high: float
    n_correct: float
    n_total: float
    start_time: int
    accuracy_answer_line: float = math.nan   # the answer-line reading (runs before it was logged: NaN)
    accuracy_cut: float = math.nan           # few-shot: the output cut at the next question
    scoring: str = ""                        # the rule `accuracy` used (param `scoring`; the paper's: `paper`)
    rehearsal: bool = False                  # stand-in models under real ids (tag distill.rehearsal)


@dataclass
class Inputs:
    eval_set: str
    # (teacher, student) -> seed -> run
    cells: dict[tuple[str, str], dict[str, EvalRun]] = field(default_factory=dict)
    baselines: dict[str, dict[str, EvalRun]] = field(default_factory=dict)           # label -> student -> run
    teacher_evals: dict[str, EvalRun] = field(default_factory=dict)
    errors: dict[str, Any] = field(default_factory=dict)                             # eval run id -> errors run
    tokens_run: Any = None
    superseded: list[str] = field(default_factory=list)   # older evaluations of the same cell and seed
    n_eval_runs: int = 0

    def run_ids(self) -> dict[str, list[str]]:
        return {
            "evaluate_students": sorted(r.run_id for seeds in self.cells.values() for r in seeds.values()),
            "evaluate_baselines": sorted(r.run_id for b in self.baselines.values() for r in b.values()),
            "evaluate_teachers": sorted(r.run_id for r in self.teacher_evals.values()),
            "errors": sorted(r.info.run_id for r in self.errors.values()),
            "tokens": [self.tokens_run.info.run_id] if self.tokens_run is not None else [],
        }

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.run_ids(), sort_keys=True).encode()).hexdigest()[:16]


def _metric(run, name: str) -> float:
    value = run.data.metrics.get(name)
    return float(value) if value is not None else math.nan


def _eval_run(run) -> EvalRun:
    t = run.data.tags
    return EvalRun(run.info.run_id, t.get(lineage.TEACHER, ""), t.get(lineage.STUDENT, ""),
                   t.get(lineage.SEED, ""), _metric(run, "accuracy"), _metric(run, "accuracy_ci_low"),
                   _metric(run, "accuracy_ci_high"), _metric(run, "n_correct"), _metric(run, "n_total"),
                   run.info.start_time or 0, _metric(run, "accuracy_answer_line"),
                   _metric(run, f"accuracy_{CUT}"), run.data.params.get("scoring", ""),
                   t.get(lineage.REHEARSAL) == "true")


def seed_key(seed: str):
    """Seeds in numeric order, non-numeric (or unknown, '') after."""
    try:
        return (0, int(seed), "")
    except (TypeError, ValueError):
        return (1, 0, str(seed))


def collect_inputs(eval_set: str, tokens_run: str = "") -> Inputs:
    """Every FINISHED input run of the active experiment, newest first wins where two overlap."""
    inputs = Inputs(eval_set)
    runs = lineage.evaluations_of(eval_set)
    inputs.n_eval_runs = len(runs)
    for run in runs:  # newest first
        t = run.data.tags
        teacher, student, baseline = t.get(lineage.TEACHER), t.get(lineage.STUDENT), t.get(lineage.BASELINE)
        er = _eval_run(run)
        if teacher and student and not baseline:
            seeds = inputs.cells.setdefault((teacher, student), {})
            if er.seed in seeds:
                inputs.superseded.append(er.run_id)
            else:
                seeds[er.seed] = er
        elif student and baseline and not teacher:
            inputs.baselines.setdefault(baseline, {}).setdefault(student, er)
        elif teacher and not student and not baseline and not t.get(lineage.SFT_RUN_ID):
            inputs.teacher_evals.setdefault(teacher, er)
    for seeds in inputs.cells.values():
        ordered = dict(sorted(seeds.items(), key=lambda kv: seed_key(kv[0])))
        seeds.clear()
        seeds.update(ordered)
    wanted = {r.run_id for seeds in inputs.cells.values() for r in seeds.values()}
    inputs.errors.update(lineage.judgments_of(wanted))
    if tokens_run:
        inputs.tokens_run = phase_runs.require_run(tokens_run, "tokens", "the report")
    else:
        inputs.tokens_run = lineage.newest_finished("tokens")
    return inputs


def ordered_names(preset_names: list[str], found) -> list[str]:
    """The preset's names in its order, then any other names found (mixes, Hub ids) sorted."""
    return list(preset_names) + sorted(set(found) - set(preset_names))


class Predictions:
    """predictions.jsonl of evaluation runs, read once each; unreadable ones remembered, never raised."""

    def __init__(self):
        self._cache: dict[str, dict[str, bool] | None] = {}
        self.unreadable: dict[str, str] = {}

    def get(self, run_id: str) -> dict[str, bool] | None:
        if run_id not in self._cache:
            try:
                rows = phase_runs.read_jsonl_artifact(run_id, "predictions.jsonl")
                self._cache[run_id] = {str(r["id"]): bool(r["correct"]) for r in rows}
            except (DistillError, KeyError, ValueError, TypeError) as e:
                self.unreadable[run_id] = (str(e) if isinstance(e, DistillError)
                                           else f"malformed ({type(e).__name__}: {e})")
                self._cache[run_id] = None
        return self._cache[run_id]


def error_counts(run) -> dict[str, float]:
    """Counts from the errors run's metrics, or from its judgments.jsonl when the metrics are absent."""
    m = run.data.metrics
    names = [f"errors_{stem}" for _, stem, _ in CATEGORIES]
    if all(n in m for n in names):
        counts = {stem: float(m[f"errors_{stem}"]) for _, stem, _ in CATEGORIES}
        total = sum(counts.values())
        return {**counts, "n_wrong": float(m.get("n_wrong", total)), "n_judged": float(m.get("n_judged", total))}
    try:
        rows = phase_runs.read_jsonl_artifact(run.info.run_id, "judgments.jsonl")
    except DistillError:
        rows = []
    counts = {stem: float(sum(r.get("category") == letter for r in rows)) for letter, stem, _ in CATEGORIES}
    return {**counts, "n_wrong": float(len(rows)), "n_judged": float(sum(counts.values()))}


def load_tokens(run) -> list[dict]:
    if run is None:
        return []
    try:
        return phase_runs.read_jsonl_artifact(run.info.run_id, "token_counts.jsonl")
    except DistillError:
        return []
