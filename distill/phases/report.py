"""The `report` phase: the paper's tables and figures from the runs in the experiment, plus significance.

Reads, by tags only, every FINISHED `evaluate`, `errors` and `tokens` run of the active experiment and
writes (as artifacts of one `report` run):

- Table 1: teacher x student accuracy (mean over seeds, spread), row and column means, the few-shot
  baseline row as the paper ran it and its cut-at-the-next-question variant (`tables/table1.{md,csv}`,
  per cell detail in `tables/table1_cells.csv`);
- the scoring robustness table: Table 1 under the paper's rule and the answer-line rule side by side,
  and whether any teacher ranking changes between them (`tables/robustness.{md,csv}`);
- Table 3: the teachers' own accuracy with the bootstrap interval (`tables/table3.{md,csv}`);
- for each student, a paired test between every two teachers on the same questions: difference, its
  paired-bootstrap 95% interval, bootstrap p, exact McNemar p, Holm-adjusted McNemar p
  (`tables/paired_tests.{md,csv}`);
- error categories (`tables/errors.{md,csv}`) and token counts per teacher answer (`tables/tokens.{md,csv}`);
- Fig. 1-3 as standalone plotly HTML that opens offline, each with a plotly JSON twin (`figures/`);
- `report.md`, which puts it together and lists everything missing; `missing.json`; `inputs.json`.

Nothing missing is an error: an absent cell is shown as "—" and listed under "Missing".
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from distill import DistillError
from distill.config import load_preset
from distill.stats import mcnemar, paired_bootstrap
from distill import tracking
from distill.params_text import lists_from_text

DASH = "—"
CUT = "cut_at_next_question"
# (judge letter, metric stem, label); metrics are `errors_<stem>` (count) and `errors_<stem>_frac`
CATEGORIES = [("A", "semantic", "(A) Semantic misunderstanding"),
              ("B", "step_missing", "(B) Step missing"),
              ("C", "calculation", "(C) Calculation error")]
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]


@dataclass
class ReportParams:
    """Tables 1 and 3, Fig. 1-3 and paired significance tests from the runs in the experiment."""

    preset: str = "offline"
    eval_set: str = ""             # empty: the preset's data.eval_set
    error_teachers: list[str] = field(default_factory=list)  # comma-separated, Fig. 2; empty: the preset's judge.teachers
    tokens_run: str = ""           # a tokens run id for Fig. 3; empty: the newest FINISHED one
    teachers: list[str] = field(default_factory=list)  # comma-separated grid Table 1, the figures and Missing cover; empty: the preset's
    students: list[str] = field(default_factory=list)
    seeds: list[str] = field(default_factory=list)  # seeds Missing expects; empty: the preset's sft.seeds
    reuse: bool = False            # true: reuse a report of exactly the same input runs and code

    __post_init__ = lists_from_text  # comma-joined text -> list[str], here only


# ---------------------------------------------------------------------------------------------
# inputs


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


@dataclass
class Inputs:
    eval_set: str
    cells: dict[tuple[str, str], dict[str, EvalRun]] = field(default_factory=dict)   # (teacher, student) -> seed -> run
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
    return EvalRun(run.info.run_id, t.get("distill.teacher", ""), t.get("distill.student", ""),
                   t.get("distill.seed", ""), _metric(run, "accuracy"), _metric(run, "accuracy_ci_low"),
                   _metric(run, "accuracy_ci_high"), _metric(run, "n_correct"), _metric(run, "n_total"),
                   run.info.start_time or 0, _metric(run, "accuracy_answer_line"),
                   _metric(run, f"accuracy_{CUT}"))


def seed_key(seed: str):
    """Seeds in numeric order, non-numeric (or unknown, '') after."""
    try:
        return (0, int(seed), "")
    except (TypeError, ValueError):
        return (1, 0, str(seed))


def collect_inputs(eval_set: str, tokens_run: str = "") -> Inputs:
    """Every FINISHED input run of the active experiment, newest first wins where two overlap."""
    inputs = Inputs(eval_set)
    runs = tracking.search_phase_runs("evaluate", status="FINISHED",
                                      extra=f"tags.`distill.eval_set` = '{tracking._escape(eval_set)}'")
    inputs.n_eval_runs = len(runs)
    for run in runs:  # newest first
        t = run.data.tags
        teacher, student, baseline = t.get("distill.teacher"), t.get("distill.student"), t.get("distill.baseline")
        er = _eval_run(run)
        if teacher and student and not baseline:
            seeds = inputs.cells.setdefault((teacher, student), {})
            if er.seed in seeds:
                inputs.superseded.append(er.run_id)
            else:
                seeds[er.seed] = er
        elif student and baseline and not teacher:
            inputs.baselines.setdefault(baseline, {}).setdefault(student, er)
        elif teacher and not student and not baseline and not t.get("distill.sft_run_id"):
            inputs.teacher_evals.setdefault(teacher, er)
    for seeds in inputs.cells.values():
        ordered = dict(sorted(seeds.items(), key=lambda kv: seed_key(kv[0])))
        seeds.clear()
        seeds.update(ordered)
    wanted = {r.run_id for seeds in inputs.cells.values() for r in seeds.values()}
    for run in tracking.search_phase_runs("errors", status="FINISHED"):
        eval_id = run.data.tags.get("distill.eval_run_id")
        if eval_id in wanted:
            inputs.errors.setdefault(eval_id, run)
    if tokens_run:
        inputs.tokens_run = tracking.require_run(tokens_run, "tokens", "the report")
    else:
        found = tracking.search_phase_runs("tokens", status="FINISHED", max_results=1)
        inputs.tokens_run = found[0] if found else None
    return inputs


def ordered_names(preset_names: list[str], found) -> list[str]:
    """The preset's names in its order, then any other names found (mixes, Hub ids) sorted."""
    return list(preset_names) + sorted(set(found) - set(preset_names))


# ---------------------------------------------------------------------------------------------
# tables


def _fmt(x: float, digits: int = 2) -> str:
    return DASH if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _nanmean(values) -> float:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def cell_summary(inputs: Inputs, teachers: list[str], students: list[str]):
    """One row per (teacher, student) with runs: mean, std and range over seeds, interval, run ids."""
    import pandas as pd

    rows = []
    for teacher in teachers:
        for student in students:
            seeds = inputs.cells.get((teacher, student))
            if not seeds:
                continue
            accs = np.array([r.accuracy for r in seeds.values()], dtype=float)
            runs = list(seeds.values())
            rows.append({
                "teacher": teacher, "student": student, "n_seeds": len(runs),
                "seeds": ",".join(s or "?" for s in seeds),
                "accuracy_mean": float(np.mean(accs)),
                "accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else math.nan,
                "accuracy_min": float(np.min(accs)), "accuracy_max": float(np.max(accs)),
                # one seed: its bootstrap interval; several: the mean of their intervals
                "ci_low": _nanmean(r.ci_low for r in runs), "ci_high": _nanmean(r.ci_high for r in runs),
                "seed_accuracies": ",".join(f"{a:.4g}" for a in accs),
                "n_total": runs[0].n_total, "run_ids": ",".join(r.run_id for r in runs),
                # NaN unless every seed logged it: a mean over some seeds would not be comparable
                "accuracy_answer_line_mean": float(np.mean([r.accuracy_answer_line for r in runs])),
            })
    columns = ["teacher", "student", "n_seeds", "seeds", "accuracy_mean", "accuracy_std", "accuracy_min",
               "accuracy_max", "ci_low", "ci_high", "seed_accuracies", "n_total", "run_ids", "accuracy_answer_line_mean"]
    return pd.DataFrame(rows, columns=columns)


def table1(cells, inputs: Inputs, teachers: list[str], preset_teachers: list[str], students: list[str],
           baseline_label: str):
    """The paper's Table 1: a wide numeric frame (CSV) and its Markdown with spread and footnotes."""
    import pandas as pd

    by_cell = {(r.teacher, r.student): r for r in cells.itertuples()}
    wide = pd.DataFrame(index=pd.Index([], name="teacher"), columns=students + ["mean"], dtype=float)
    for teacher in teachers:
        values = [by_cell[(teacher, s)].accuracy_mean if (teacher, s) in by_cell else math.nan for s in students]
        wide.loc[teacher] = values + [_nanmean(values)]
    size_rows = [t for t in preset_teachers if t in wide.index]
    col_means = [_nanmean(wide.loc[size_rows, s]) if size_rows else math.nan for s in students]
    grand = [by_cell[(t, s)].accuracy_mean for t in preset_teachers for s in students if (t, s) in by_cell]
    wide.loc["mean"] = col_means + [_nanmean(grand)]
    labels = [baseline_label] + sorted(set(inputs.baselines) - {baseline_label})
    baseline_rows = []  # each baseline, then its cut-at-the-next-question variant where logged
    for label in labels:
        runs = inputs.baselines.get(label, {})
        values = [runs[s].accuracy if s in runs else math.nan for s in students]
        wide.loc[label] = values + [_nanmean(values)]
        baseline_rows.append(label)
        cut = [runs[s].accuracy_cut if s in runs else math.nan for s in students]
        if any(np.isfinite(cut)):
            wide.loc[f"{label}, {CUT_LABEL}"] = cut + [_nanmean(cut)]
            baseline_rows.append(f"{label}, {CUT_LABEL}")

    best = {s: np.nanmax(wide.loc[teachers, s].to_numpy(dtype=float)) if teachers and
            np.isfinite(wide.loc[teachers, s].to_numpy(dtype=float)).any() else math.nan for s in students}
    n_best = {s: sum(abs(wide.loc[t, s] - best[s]) < 1e-9 for t in teachers if np.isfinite(wide.loc[t, s]))
              for s in students}
    rows, partial = [], False
    for teacher in teachers:
        row = [teacher]
        for s in students:
            c = by_cell.get((teacher, s))
            if c is None:
                row.append(DASH)
                continue
            text = _fmt(c.accuracy_mean)
            if c.n_seeds > 1:
                text += f" ± {_fmt(c.accuracy_std)} (n={c.n_seeds})"
            if np.isfinite(best[s]) and abs(c.accuracy_mean - best[s]) < 1e-9 and n_best[s] == 1:
                text = f"**{text}**"
            row.append(text)
        n_present = sum((teacher, s) in by_cell for s in students)
        mean_text = _fmt(wide.loc[teacher, "mean"])
        if 0 < n_present < len(students):
            mean_text += "†"
            partial = True
        rows.append(row + [mean_text])
    mean_row = ["mean"]
    for s in students:
        n_present = sum((t, s) in by_cell for t in size_rows)
        text = _fmt(wide.loc["mean", s])
        if 0 < n_present < len(size_rows) or (n_present and len(size_rows) < len(preset_teachers)):
            text += "†"
            partial = True
        mean_row.append(text)
    rows.append(mean_row + [_fmt(wide.loc["mean", "mean"])])
    for label in baseline_rows:
        present = [s for s in students if np.isfinite(wide.loc[label, s])]
        mean_text = _fmt(wide.loc[label, "mean"]) + ("†" if 0 < len(present) < len(students) else "")
        rows.append([label] + [_fmt(wide.loc[label, s]) for s in students] + [mean_text])
    md = md_table(["teacher \\ student"] + students + ["mean"], rows)
    notes = ["Accuracy (%) on the evaluation set. A cell with several seeds shows the mean over seeds ± their "
             "sample standard deviation (n = seeds); the newest evaluation wins where a (teacher, student, seed) "
             "was evaluated twice. Bold: best teacher for the student (none on a tie). " + DASH + ": no evaluation.",
             "Row `mean`: over the teachers of this grid (" + ", ".join(preset_teachers) + "; mixes excluded); "
             f"the row `{baseline_label}` is the untrained student with the few-shot prompt as the paper ran it "
             "(greedy, the preset's repetition penalty, no stop string beyond EOS: the output runs on into invented "
             "questions and its last number is scored)."]
    if len(baseline_rows) > len(labels):
        notes.append(f"Row `<baseline>, {CUT_LABEL}`: the same generations cut where the model starts a new "
                     "`問題`, then scored the same way (what a stop string at the next question would report).")
    if partial:
        notes.append("†: mean over the cells present only (some are missing), so not comparable with a full row.")
    return wide, md + "\n\n" + "\n".join(f"- {n}" for n in notes)


CUT_LABEL = "cut at next question"


def _ranking(values: dict[str, float], order: list[str]) -> list[str] | None:
    """Teachers best first (ties in the preset's order); None when a value is missing."""
    if not values or not all(np.isfinite(v) for v in values.values()):
        return None
    return sorted(values, key=lambda t: (-round(values[t], 9), order.index(t)))


def robustness(cells, inputs: Inputs, teachers: list[str], preset_teachers: list[str], students: list[str],
               baseline_labels: list[str]):
    """Table 1 under both scoring rules side by side, and for each student (and the mean) whether the
    ranking of the teachers changes from the paper's rule to the answer-line rule."""
    import pandas as pd

    by_cell = {(r.teacher, r.student): r for r in cells.itertuples()}
    rows, md_rows = [], []
    for teacher in teachers:
        line = [teacher]
        for s in students:
            c = by_cell.get((teacher, s))
            if c is None:
                line.append(DASH)
                continue
            rows.append({"row": teacher, "student": s, "accuracy_paper": c.accuracy_mean,
                         "accuracy_answer_line": c.accuracy_answer_line_mean,
                         "difference": c.accuracy_answer_line_mean - c.accuracy_mean})
            line.append(f"{_fmt(c.accuracy_mean)} / {_fmt(c.accuracy_answer_line_mean)}")
        md_rows.append(line)
    for label in baseline_labels:
        runs = inputs.baselines.get(label, {})
        line = [label]
        for s in students:
            r = runs.get(s)
            if r is None:
                line.append(DASH)
                continue
            rows.append({"row": label, "student": s, "accuracy_paper": r.accuracy,
                         "accuracy_answer_line": r.accuracy_answer_line,
                         "difference": r.accuracy_answer_line - r.accuracy})
            line.append(f"{_fmt(r.accuracy)} / {_fmt(r.accuracy_answer_line)}")
        md_rows.append(line)
    table = pd.DataFrame(rows, columns=["row", "student", "accuracy_paper", "accuracy_answer_line", "difference"])

    rankings = []
    for s in students + ["mean"]:
        if s == "mean":  # the preset's teachers by their mean over the students all of them have
            present = [t for t in preset_teachers if any((t, x) in by_cell for x in students)]
            common = [x for x in students if all((t, x) in by_cell for t in present)]
            present = present if common else []
            paper = {t: float(np.mean([by_cell[(t, x)].accuracy_mean for x in common])) for t in present}
            line = {t: float(np.mean([by_cell[(t, x)].accuracy_answer_line_mean for x in common])) for t in present}
        else:
            present = [t for t in teachers if (t, s) in by_cell]
            paper = {t: by_cell[(t, s)].accuracy_mean for t in present}
            line = {t: by_cell[(t, s)].accuracy_answer_line_mean for t in present}
        if len(present) < 2:
            continue
        a, b = _ranking(paper, teachers), _ranking(line, teachers)
        rankings.append({"student": s, "ranking_paper": " > ".join(a), "ranking_answer_line":
                         " > ".join(b) if b else "", "changed": (a != b) if b else None})
    md = md_table(["row \\ student"] + students, md_rows) if md_rows else "No evaluations."
    md += ("\n\n- Each cell: accuracy (%) under the paper's rule (the last number of the output; Table 1) / "
           "under the answer-line rule (the last number on the final `解答:` line, else the paper's rule). "
           "A gap means the model writes something after its answer (a base model inventing the next question, "
           "a check, units). " + DASH + " after the slash: the run did not log the second reading.")
    if rankings:
        md += "\n\n" + md_table(["student", "teachers, paper's rule", "teachers, answer-line rule", "ranking changes"],
                                 [[r["student"], r["ranking_paper"], r["ranking_answer_line"] or DASH,
                                   DASH if r["changed"] is None else ("**yes**" if r["changed"] else "no")]
                                  for r in rankings])
        md += ("\n\n- Best first; `mean` ranks the preset's teachers by their mean over the students all of them "
               "have. " + robustness_verdict(rankings))
    return table, rankings, md


def robustness_verdict(rankings: list[dict]) -> str:
    changed = [r["student"] for r in rankings if r["changed"]]
    unknown = [r["student"] for r in rankings if r["changed"] is None]
    if changed:
        text = "The teacher ranking changes under the answer-line rule for: " + ", ".join(changed) + "."
    elif len(unknown) == len(rankings):
        text = "No teacher ranking could be compared under both rules."
    else:
        text = "No teacher ranking changes under the answer-line rule."
    if unknown and len(unknown) < len(rankings):
        text += " Not compared (a run without the answer-line reading): " + ", ".join(unknown) + "."
    return text


def table3(inputs: Inputs, teachers: list[str]):
    import pandas as pd

    rows = []
    for t in teachers:
        r = inputs.teacher_evals.get(t)
        rows.append({"teacher": t, "accuracy": r.accuracy if r else math.nan,
                     "ci_low": r.ci_low if r else math.nan, "ci_high": r.ci_high if r else math.nan,
                     "n_correct": r.n_correct if r else math.nan, "n_total": r.n_total if r else math.nan,
                     "run_id": r.run_id if r else ""})
    df = pd.DataFrame(rows, columns=["teacher", "accuracy", "ci_low", "ci_high", "n_correct", "n_total", "run_id"])
    md_rows = []
    for r in df.itertuples():
        if not r.run_id:
            md_rows.append([r.teacher, DASH, DASH, DASH])
        else:
            md_rows.append([r.teacher, _fmt(r.accuracy), f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]",
                            f"{int(r.n_correct)}/{int(r.n_total)}" if np.isfinite(r.n_total) else DASH])
    md = md_table(["teacher", "accuracy (%)", "95% bootstrap interval", "correct / total"], md_rows)
    return df, md


def holm(pvalues) -> list[float]:
    """Holm's step-down adjustment (family-wise error) of a list of p values; NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    idx = [i for i in range(p.size) if np.isfinite(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p[i])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


class Predictions:
    """predictions.jsonl of evaluation runs, read once each; unreadable ones remembered, never raised."""

    def __init__(self):
        self._cache: dict[str, dict[str, bool] | None] = {}
        self.unreadable: dict[str, str] = {}

    def get(self, run_id: str) -> dict[str, bool] | None:
        if run_id not in self._cache:
            try:
                rows = tracking.read_jsonl_artifact(run_id, "predictions.jsonl")
                self._cache[run_id] = {str(r["id"]): bool(r["correct"]) for r in rows}
            except (DistillError, KeyError, ValueError, TypeError) as e:
                self.unreadable[run_id] = str(e) if isinstance(e, DistillError) else f"malformed ({type(e).__name__}: {e})"
                self._cache[run_id] = None
        return self._cache[run_id]


PAIRED_COLUMNS = ["student", "teacher_a", "teacher_b", "seeds", "mcnemar_seed", "n_questions", "accuracy_a",
                  "accuracy_b", "diff", "ci_low", "ci_high", "p_bootstrap", "only_a", "only_b", "p_mcnemar",
                  "p_mcnemar_holm", "note"]


def paired_test(inputs: Inputs, student: str, a: str, b: str, predictions: Predictions) -> dict:
    """Teacher a vs. teacher b for one student, on the questions both evaluations share.

    Seeds: the seeds both cells have. The paired bootstrap resamples questions and compares each
    question's correctness averaged over those seeds (the difference is then the mean over seeds);
    the exact McNemar test needs one binary answer per question and uses the first common seed.
    Without a common seed, each cell's first seed is used and the note says so.
    """
    row = {c: math.nan for c in PAIRED_COLUMNS}
    row.update({"student": student, "teacher_a": a, "teacher_b": b, "note": "", "seeds": "", "mcnemar_seed": ""})
    seeds_a, seeds_b = inputs.cells[(a, student)], inputs.cells[(b, student)]
    common = [s for s in seeds_a if s in seeds_b]
    if common:
        pairs = [(seeds_a[s], seeds_b[s]) for s in common]
        row["seeds"] = ",".join(s or "?" for s in common)
    else:
        sa, sb = next(iter(seeds_a)), next(iter(seeds_b))
        pairs = [(seeds_a[sa], seeds_b[sb])]
        row["seeds"] = f"{sa or '?'} vs {sb or '?'}"
        row["note"] = "no common seed: different seeds compared"
    loaded = [(predictions.get(ra.run_id), predictions.get(rb.run_id)) for ra, rb in pairs]
    bad = [r.run_id for pair in pairs for r in pair if predictions.get(r.run_id) is None]
    if bad:
        row["note"] = "; ".join(filter(None, [row["note"], "predictions unreadable: " + ", ".join(sorted(set(bad)))]))
        return row
    ids = set.intersection(*[set(pa) & set(pb) for pa, pb in loaded])
    ids = sorted(ids, key=lambda i: (len(i), i))
    row["n_questions"] = len(ids)
    if not ids:
        row["note"] = "; ".join(filter(None, [row["note"], "no questions in common"]))
        return row
    va = np.array([[pa[i] for i in ids] for pa, _ in loaded], dtype=float).mean(axis=0)
    vb = np.array([[pb[i] for i in ids] for _, pb in loaded], dtype=float).mean(axis=0)
    boot = paired_bootstrap(va, vb)
    first_a, first_b = loaded[0]
    mc = mcnemar([first_a[i] for i in ids], [first_b[i] for i in ids])
    row.update({"accuracy_a": 100 * va.mean(), "accuracy_b": 100 * vb.mean(), **boot, **mc,
                "mcnemar_seed": row["seeds"].split(",")[0]})
    n_all = {len(pa) for pa, _ in loaded} | {len(pb) for _, pb in loaded}
    if n_all != {len(ids)}:
        row["note"] = "; ".join(filter(None, [row["note"], f"only the {len(ids)} questions both evaluated"]))
    return row


def paired_tests(inputs: Inputs, teachers: list[str], students: list[str], predictions: Predictions):
    import pandas as pd

    rows = []
    for student in students:
        present = [t for t in teachers if (t, student) in inputs.cells]
        block = [paired_test(inputs, student, a, b, predictions)
                 for i, a in enumerate(present) for b in present[i + 1:]]
        for r, adj in zip(block, holm([r["p_mcnemar"] for r in block])):
            r["p_mcnemar_holm"] = adj
        rows += block
    df = pd.DataFrame(rows, columns=PAIRED_COLUMNS)
    md_rows = [[r.student, r.teacher_a, r.teacher_b, r.seeds, int(r.n_questions) if np.isfinite(r.n_questions) else DASH,
                _fmt(r.accuracy_a), _fmt(r.accuracy_b), _fmt(r.diff, 2) if not np.isfinite(r.diff) else f"{r.diff:+.2f}",
                f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" if np.isfinite(r.ci_low) else DASH, _fmt_p(r.p_bootstrap),
                f"{int(r.only_a)} / {int(r.only_b)}" if np.isfinite(r.only_a) else DASH, _fmt_p(r.p_mcnemar),
                _fmt_p(r.p_mcnemar_holm), r.note] for r in df.itertuples()]
    md = md_table(["student", "A", "B", "seeds", "n", "acc A", "acc B", "A − B (points)", "95% CI",
                   "p (bootstrap)", "A only / B only", "p (McNemar)", "p (Holm)", "note"], md_rows)
    md += ("\n\n- Each row compares two teachers' students on the questions both evaluations contain (paired by "
           "question `id`). `A − B` is the accuracy difference in points with its 95% paired-bootstrap interval "
           "(10,000 resamples of questions) and two-sided bootstrap p; `A only / B only` are the discordant "
           "questions of the exact McNemar test; `p (Holm)` adjusts the McNemar p for the comparisons of the "
           "same student (Holm, family-wise 5%).\n- Seeds: the seeds both cells have. The bootstrap compares each "
           "question's correctness averaged over those seeds; McNemar uses the first common seed. With no "
           "common seed each cell's first seed is used (see note).\n- The interval covers the sampling of "
           "questions only, not the variation between training seeds (Table 1's ± shows that).")
    if df.empty:
        md = "No student has evaluations for two teachers: no paired test.\n"
    return df, md


def error_summary(inputs: Inputs, error_teachers: list[str], students: list[str]):
    """Error categories of the judged wrong answers, summed over the seeds that have an errors run."""
    import pandas as pd

    rows = []
    for teacher in error_teachers:
        for student in students:
            seeds = inputs.cells.get((teacher, student), {})
            judged = [(s, inputs.errors[r.run_id]) for s, r in seeds.items() if r.run_id in inputs.errors]
            if not judged:
                continue
            counts = {stem: 0.0 for _, stem, _ in CATEGORIES}
            n_wrong = n_judged = 0.0
            for _, run in judged:
                c = _error_counts(run)
                for stem in counts:
                    counts[stem] += c[stem]
                n_wrong += c["n_wrong"]
                n_judged += c["n_judged"]
            row = {"teacher": teacher, "student": student, "seeds": ",".join(s or "?" for s, _ in judged),
                   "n_wrong": n_wrong, "n_judged": n_judged}
            for _, stem, _ in CATEGORIES:
                row[f"errors_{stem}"] = counts[stem]
            for _, stem, _ in CATEGORIES:
                row[f"errors_{stem}_frac"] = counts[stem] / n_judged if n_judged else math.nan
            row["errors_run_ids"] = ",".join(run.info.run_id for _, run in judged)
            rows.append(row)
    columns = (["teacher", "student", "seeds", "n_wrong", "n_judged"] + [f"errors_{s}" for _, s, _ in CATEGORIES]
               + [f"errors_{s}_frac" for _, s, _ in CATEGORIES] + ["errors_run_ids"])
    df = pd.DataFrame(rows, columns=columns)
    md_rows = [[r["teacher"], r["student"], r["seeds"], int(r["n_wrong"]), int(r["n_judged"])]
               + [f"{int(r[f'errors_{s}'])} ({_fmt(100 * r[f'errors_{s}_frac'], 1)}%)" for _, s, _ in CATEGORIES]
               for _, r in df.iterrows()]
    md = md_table(["teacher", "student", "seeds", "wrong", "judged"] + [label for _, _, label in CATEGORIES], md_rows)
    return df, md


def _error_counts(run) -> dict[str, float]:
    """Counts from the errors run's metrics, or from its judgments.jsonl when the metrics are absent."""
    m = run.data.metrics
    names = [f"errors_{stem}" for _, stem, _ in CATEGORIES]
    if all(n in m for n in names):
        counts = {stem: float(m[f"errors_{stem}"]) for _, stem, _ in CATEGORIES}
        total = sum(counts.values())
        return {**counts, "n_wrong": float(m.get("n_wrong", total)), "n_judged": float(m.get("n_judged", total))}
    try:
        rows = tracking.read_jsonl_artifact(run.info.run_id, "judgments.jsonl")
    except DistillError:
        rows = []
    counts = {stem: float(sum(r.get("category") == letter for r in rows)) for letter, stem, _ in CATEGORIES}
    return {**counts, "n_wrong": float(len(rows)), "n_judged": float(sum(counts.values()))}


def load_tokens(run) -> list[dict]:
    if run is None:
        return []
    try:
        return tracking.read_jsonl_artifact(run.info.run_id, "token_counts.jsonl")
    except DistillError:
        return []


def tokens_summary(rows: list[dict], teachers: list[str], tokenizers: list[str]):
    import pandas as pd

    df = pd.DataFrame.from_records(rows)
    columns = ["tokenizer", "teacher", "n", "tokens_mean", "tokens_median", "tokens_std", "tokens_q1", "tokens_q3",
               "steps_mean", "uses_decimal_frac"]
    out = []
    if not df.empty and {"tokenizer", "teacher", "tokens"} <= set(df.columns):
        for tok in tokenizers:
            for teacher in teachers:
                sub = df[(df["tokenizer"] == tok) & (df["teacher"] == teacher)]
                if sub.empty:
                    continue
                x = sub["tokens"].astype(float)
                out.append({"tokenizer": tok, "teacher": teacher, "n": len(sub), "tokens_mean": x.mean(),
                            "tokens_median": x.median(), "tokens_std": x.std(ddof=1) if len(x) > 1 else math.nan,
                            "tokens_q1": x.quantile(0.25), "tokens_q3": x.quantile(0.75),
                            "steps_mean": sub["steps"].astype(float).mean() if "steps" in sub else math.nan,
                            "uses_decimal_frac": sub["uses_decimal"].astype(float).mean()
                            if "uses_decimal" in sub else math.nan})
    summary = pd.DataFrame(out, columns=columns)
    md_rows = [[r.tokenizer, r.teacher, r.n, _fmt(r.tokens_mean, 1), _fmt(r.tokens_median, 1),
                f"{_fmt(r.tokens_q1, 1)}–{_fmt(r.tokens_q3, 1)}", _fmt(r.steps_mean, 2),
                _fmt(100 * r.uses_decimal_frac, 1)] for r in summary.itertuples()]
    md = md_table(["tokenizer", "teacher", "answers", "mean tokens", "median", "IQR", "mean steps",
                   "answers with decimals (%)"], md_rows)
    return summary, md


# ---------------------------------------------------------------------------------------------
# figures


def teacher_colors(teachers: list[str]) -> dict[str, str]:
    return {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(teachers)}


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return max(1, math.ceil(n / cols)), cols


def figure_accuracy(cells, inputs: Inputs, teachers: list[str], students: list[str], baseline_label: str):
    """Fig. 1: one panel per student, a bar per teacher (error bar: bootstrap 95% interval), seed dots,
    and the few-shot baseline as a dashed line."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    colors = teacher_colors(teachers)
    by_cell = {(r.teacher, r.student): r for r in cells.itertuples()}
    n_bars = len(teachers) + len(inputs.baselines)
    rows, cols = _grid(len(students), 4 if n_bars <= 5 else 2)   # wider panels when mixes add bars
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=students or ["(no students)"], shared_yaxes=True,
                        horizontal_spacing=0.04, vertical_spacing=0.18)
    top = max([c.ci_high for c in by_cell.values() if np.isfinite(c.ci_high)]
              + [c.accuracy_max for c in by_cell.values()]
              + [r.accuracy for b in inputs.baselines.values() for r in b.values() if np.isfinite(r.accuracy)] + [1.0])
    seed_legend = True
    for k, student in enumerate(students):
        row, col = k // cols + 1, k % cols + 1
        ys, lo, hi, texts, hover = [], [], [], [], []
        for t in teachers:
            c = by_cell.get((t, student))
            if c is None:
                ys.append(None), lo.append(0), hi.append(0), texts.append(""), hover.append(f"{t}: missing")
                continue
            ys.append(c.accuracy_mean)
            lo.append(max(c.accuracy_mean - c.ci_low, 0) if np.isfinite(c.ci_low) else 0)
            hi.append(max(c.ci_high - c.accuracy_mean, 0) if np.isfinite(c.ci_high) else 0)
            texts.append(f"{c.accuracy_mean:.1f}")
            spread = f" ± {c.accuracy_std:.2f} over {c.n_seeds} seeds" if c.n_seeds > 1 else f" (seed {c.seeds})"
            hover.append(f"{t}: {c.accuracy_mean:.2f}%{spread}<br>95% CI [{c.ci_low:.2f}, {c.ci_high:.2f}]")
        fig.add_trace(go.Bar(x=teachers, y=ys, name=student, marker_color=[colors[t] for t in teachers],
                             error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo, thickness=1.5,
                                          width=4, color="#333"),
                             text=texts, textposition="outside", textfont_color="#222", cliponaxis=False,
                             textangle=0,
                             hovertext=hover, hoverinfo="text", showlegend=False), row=row, col=col)
        sx, sy = [], []
        for t in teachers:
            for run in inputs.cells.get((t, student), {}).values():
                if len(inputs.cells[(t, student)]) > 1:
                    sx.append(t), sy.append(run.accuracy)
        if sx:
            fig.add_trace(go.Scatter(x=sx, y=sy, mode="markers", name="one seed",
                                     marker=dict(color="black", size=6, symbol="circle-open"),
                                     showlegend=seed_legend, legendgroup="seeds"), row=row, col=col)
            seed_legend = False
        missing = [t for t in teachers if (t, student) not in by_cell]
        if missing:
            fig.add_trace(go.Scatter(x=missing, y=[top * 0.04] * len(missing), mode="text", text=["missing"] * len(missing),
                                     textfont=dict(color="#999", size=11), hoverinfo="skip", showlegend=False),
                          row=row, col=col)
        categories = list(teachers)
        for label, runs in inputs.baselines.items():
            r = runs.get(student)
            if r is None or not np.isfinite(r.accuracy):
                continue
            # the untrained student: a grey bar of its own at the right and a dashed line behind the teachers' bars
            categories.append(label)
            fig.add_trace(go.Bar(x=[label], y=[r.accuracy], name=f"{label} baseline", marker_color="#c7c7c7",
                                 marker_pattern_shape="/", text=[f"{r.accuracy:.1f}"], textposition="outside",
                                 hovertext=[f"untrained {student}, {label}: {r.accuracy:.2f}%"], hoverinfo="text",
                                 showlegend=False), row=row, col=col)
            fig.add_hline(y=r.accuracy, line_dash="dash", line_color="#777", line_width=1, layer="below",
                          row=row, col=col)
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=categories, title_text="teacher",
                         row=row, col=col)
    fig.update_yaxes(range=[0, percent_axis_top(top)], col=1, title_text="accuracy (%)")
    fig.update_layout(title=f"Fig. 1: student accuracy by teacher ({inputs.eval_set})<br><sup>error bars: bootstrap 95% "
                            "interval; circles: single seeds; grey bar and dashed line: the untrained student, "
                            "few-shot</sup>",
                      template="plotly_white", height=380 * rows + 120, bargap=0.25, margin=dict(t=110),
                      showlegend=False)
    return fig


def figure_errors(errors_df, error_teachers: list[str], students: list[str], colors: dict[str, str]):
    """Fig. 2: per student, bars per error category and teacher: height = share of the judged wrong
    answers, the count written on the bar."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    by = {(r["teacher"], r["student"]): r for _, r in errors_df.iterrows()}
    rows, cols = _grid(len(students))
    titles = []
    for s in students:
        parts = [f"{t}: n={int(by[(t, s)]['n_judged'])}" if (t, s) in by else f"{t}: missing" for t in error_teachers]
        titles.append(f"{s}<br><sup>{' · '.join(parts)}</sup>")
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles or ["(no students)"], shared_yaxes=True,
                        horizontal_spacing=0.04, vertical_spacing=0.2)
    cats = ["(A)<br>semantic", "(B)<br>step missing", "(C)<br>calculation"]
    top = max([100 * r[f"errors_{stem}_frac"] for r in by.values() for _, stem, _ in CATEGORIES
               if np.isfinite(r[f"errors_{stem}_frac"])] + [10.0])
    shown = set()
    for k, student in enumerate(students):
        row, col = k // cols + 1, k % cols + 1
        for t in error_teachers:
            r = by.get((t, student))
            if r is None:  # an empty trace keeps the other teacher's bars in their place
                fig.add_trace(go.Bar(x=cats, y=[None] * len(cats), name=f"teacher {t}", legendgroup=t,
                                     showlegend=False, marker_color=colors.get(t, "#888"), hoverinfo="skip"),
                              row=row, col=col)
                continue
            ys = [100 * r[f"errors_{stem}_frac"] for _, stem, _ in CATEGORIES]
            counts = [int(r[f"errors_{stem}"]) for _, stem, _ in CATEGORIES]
            fig.add_trace(go.Bar(x=cats, y=ys, name=f"teacher {t}", legendgroup=t, showlegend=t not in shown,
                                 marker_color=colors.get(t, "#888"), text=[str(c) for c in counts],
                                 textposition="outside", cliponaxis=False, customdata=counts,
                                 hovertemplate=f"teacher {t}<br>%{{x}}: %{{customdata}} answers (%{{y:.1f}}%)"
                                               "<extra></extra>"),
                          row=row, col=col)
            shown.add(t)
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=cats, tickangle=0, row=row, col=col)
    fig.update_yaxes(range=[0, min(100, top * 1.15) if top < 87 else 100], col=1,
                     title_text="share of judged wrong answers (%)")
    fig.update_layout(title="Fig. 2: error categories of the students' wrong answers (bar: share, number: count)",
                      barmode="group", template="plotly_white", height=400 * rows + 140, margin=dict(t=130),
                      legend=dict(orientation="h", y=-0.15), font=dict(size=12))
    if errors_df.empty:
        _say(fig, "No errors run for " + ", ".join(error_teachers) + " yet (see Missing in report.md).")
    return fig


def figure_tokens(rows: list[dict], teachers: list[str], tokenizers: list[str], colors: dict[str, str]):
    """Fig. 3: box plot of tokens per teacher answer, one panel per tokenizer (the mean as a dashed line)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n_rows, cols = _grid(len(tokenizers), 3)
    fig = make_subplots(rows=n_rows, cols=cols, subplot_titles=[f"tokenizer {t}" for t in tokenizers] or [""],
                        horizontal_spacing=0.06, vertical_spacing=0.18)
    for k, tok in enumerate(tokenizers):
        r, c = k // cols + 1, k % cols + 1
        for t in teachers:
            ys = [x["tokens"] for x in rows if x.get("tokenizer") == tok and x.get("teacher") == t]
            if not ys:
                continue
            fig.add_trace(go.Box(y=ys, name=t, marker_color=colors.get(t, "#888"), boxmean=True, showlegend=False,
                                 legendgroup=t), row=r, col=c)
        present = [t for t in teachers if any(x.get("tokenizer") == tok and x.get("teacher") == t for x in rows)]
        means = {t: np.mean([x["tokens"] for x in rows if x.get("tokenizer") == tok and x.get("teacher") == t])
                 for t in present}
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=present, tickvals=present,
                         ticktext=[f"{t}<br>mean {means[t]:.1f}" for t in present], title_text="teacher",
                         row=r, col=c)
        fig.update_yaxes(title_text="tokens per answer" if c == 1 else None, rangemode="tozero", row=r, col=c)
    fig.update_layout(title="Fig. 3: tokens per teacher answer (box: quartiles, whiskers 1.5 IQR, dashed: mean)",
                      template="plotly_white", height=420 * n_rows + 100)
    if not tokenizers:
        _say(fig, "No token counts: no FINISHED tokens run with token_counts.jsonl (see Missing in report.md).")
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    return fig


def percent_axis_top(top: float) -> float:
    """An accuracy axis in %: 0-100 once the data reach past 60, else up to the data (at least 10%)
    with room for the labels above the bars; never 0-1 on all-zero data."""
    return 100.0 if top > 60 else max(10.0, math.ceil(top * 1.25 / 5) * 5)


def _say(fig, text: str) -> None:
    fig.add_annotation(text=text, xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False,
                       font=dict(size=16, color="#666"), bgcolor="white")


# `.mjs`: the MLflow server sends it as text/javascript (a `.js` artifact goes out as text/plain with
# nosniff, which no browser runs); loaded as a classic script all the same.
PLOTLY_JS = "plotly.min.mjs"
# The MLflow UI shows an HTML artifact from a blob: URL, where `plotly.min.mjs` resolves to nothing:
# there the figure fetches the shared copy from the server it was opened from.
_UI_LOADER = ('<script>if(!window.Plotly&&location.protocol==="blob:"){{document.write(\'<script charset="utf-8" '
              'src="\'+new URL(location.href.slice(5)).origin+\'/get-artifact?path=figures%2F{js}&run_uuid={run}">'
              '<\\/script>\')}}</script>')


def write_plotlyjs(folder: Path) -> None:
    """plotly.js once, from the installed plotly package, for every figure beside it (no network needed)."""
    from plotly.offline import get_plotlyjs

    (folder / PLOTLY_JS).write_text(get_plotlyjs(), encoding="utf-8")


def write_figure(fig, path: Path, run_id: str = "") -> None:
    """HTML that loads the shared plotly.js beside it (opens offline once downloaded; in the MLflow UI
    from the run's artifacts), and the figure's JSON beside it."""
    html = fig.to_html(include_plotlyjs=False, full_html=True)  # plotly takes only a `.js` name as a path
    tag = f'<script charset="utf-8" src="{PLOTLY_JS}"></script>'
    if run_id:
        tag += _UI_LOADER.format(js=PLOTLY_JS, run=run_id)
    html = html.replace("</head>", tag + "\n</head>", 1)
    path.with_suffix(".html").write_text(html, encoding="utf-8")
    fig.write_json(str(path.with_suffix(".json")))


# ---------------------------------------------------------------------------------------------
# missing


def missing_items(inputs: Inputs, grid: dict, teachers: list[str], students: list[str], error_teachers: list[str],
                  baseline_label: str, token_rows: list[dict], predictions: Predictions) -> list[dict]:
    """What the grid (`teachers`, `students`, `seeds`, `tokenizers`: the run's, else the preset's) lacks."""
    out = []

    def add(kind, what, detail=""):
        out.append({"kind": kind, "what": what, "detail": detail})

    seeds_wanted = grid["seeds"]
    for t in grid["teachers"]:
        for s in grid["students"]:
            seeds = inputs.cells.get((t, s))
            if not seeds:
                add("cell", f"{t} / {s}", "no FINISHED evaluate run of the student trained on this teacher")
            elif [x for x in seeds_wanted if x not in seeds]:
                add("seed", f"{t} / {s}", "seeds missing: " + ", ".join(x for x in seeds_wanted if x not in seeds))
    for t in grid["teachers"]:
        if t not in inputs.teacher_evals:
            add("teacher_eval", t, "no zero-shot evaluate run of the teacher itself (Table 3)")
    for s in grid["students"]:
        if s not in inputs.baselines.get(baseline_label, {}):
            add("baseline", s, f"no {baseline_label} evaluate run of the untrained student")
    for t in error_teachers:
        for s in students:
            seeds = inputs.cells.get((t, s), {})
            if not seeds:
                if s in grid["students"]:
                    add("errors", f"{t} / {s}", "no evaluation to judge")
                continue
            unjudged = [f"seed {k or '?'} (evaluate run {r.run_id})" for k, r in seeds.items()
                        if r.run_id not in inputs.errors]
            if unjudged:
                add("errors", f"{t} / {s}", "no FINISHED errors run for " + ", ".join(unjudged))
    if inputs.tokens_run is None:
        add("tokens", "tokens run", "no FINISHED tokens run in this experiment (Fig. 3)")
    else:
        rid = inputs.tokens_run.info.run_id
        if not token_rows:
            add("tokens", f"tokens run {rid}", "no readable token_counts.jsonl")
        else:
            have_t = {r.get("teacher") for r in token_rows}
            have_k = {r.get("tokenizer") for r in token_rows}
            for t in grid["teachers"]:
                if t not in have_t:
                    add("tokens", t, f"tokens run {rid} has no answers of this teacher")
            for k in grid["tokenizers"]:
                if k not in have_k:
                    add("tokens", f"tokenizer {k}", f"tokens run {rid} did not count with this tokenizer")
    for run_id, why in predictions.unreadable.items():
        add("predictions", run_id, why)
    return out


def grid_names(given: list[str], known: list[str], what: str) -> list[str]:
    """[7B, 72b] -> the preset's spelling of each; empty: all of the preset's."""
    if not given:
        return known
    out = []
    for name in given:
        match = next((k for k in known if k.lower() == name.lower()), None)
        if match is None:
            raise DistillError(f"unknown name {name!r} in {what}; known {what}: {', '.join(known)}")
        out.append(match)
    return out


def preset_list(preset: dict, key: str) -> list[str]:
    return [str(k) for k in getattr(preset, key)]


# ---------------------------------------------------------------------------------------------
# the run


def _summary_lines(wide, cells, paired, preset_teachers, students, missing) -> list[str]:
    lines = []
    n_cells = len(preset_teachers) * len(students)
    n_missing = sum(m["kind"] == "cell" for m in missing)
    lines.append(f"Table 1 has {n_cells - n_missing} of {n_cells} teacher x student cells; "
                 f"{len(missing)} item(s) missing in all (see Missing).")
    for s in students:
        sub = cells[cells["student"] == s]
        if not sub.empty:
            top = sub["accuracy_mean"].max()
            at_top = sub[(sub["accuracy_mean"] - top).abs() < 1e-9]["teacher"].tolist()
            if len(sub) == 1:
                lines.append(f"{s}: one teacher evaluated, {at_top[0]} ({top:.2f}%).")
            elif len(at_top) > 1:
                lines.append(f"{s}: tie between {', '.join(at_top)} ({top:.2f}%).")
            else:
                lines.append(f"{s}: best teacher {at_top[0]} ({top:.2f}%).")
    present = [t for t in preset_teachers if t in wide.index and np.isfinite(wide.loc[t, "mean"])]
    if len(present) >= 2:
        small, large = present[0], present[-1]
        both = [s for s in students if np.isfinite(wide.loc[small, s]) and np.isfinite(wide.loc[large, s])]
        if both:
            d = float(np.mean([wide.loc[small, s] - wide.loc[large, s] for s in both]))
            lines.append(f"Smallest vs. largest teacher present, {small} − {large}, mean over the {len(both)} "
                         f"student(s) with both: {d:+.2f} points.")
    sig = paired[paired["p_mcnemar_holm"] < 0.05] if not paired.empty else paired
    if paired.empty:
        lines.append("No paired test could be made.")
    elif sig.empty:
        lines.append(f"None of the {len(paired)} paired differences is significant (Holm-adjusted McNemar p < 0.05).")
    else:
        lines.append("Significant differences (Holm-adjusted McNemar p < 0.05): " + "; ".join(
            f"{r.student}: {r.teacher_a} − {r.teacher_b} {r.diff:+.2f} points" for r in sig.itertuples()) + ".")
    return lines


def _artifact_link(meta: dict, path: str) -> str:
    """A link that opens the artifact in the MLflow UI from whatever host serves it (a hash route of
    the run page; a link relative to report.md would 404 there), with the path for a downloaded copy."""
    if not meta.get("run_id"):
        return f"`{path}` (beside this file)"
    return (f"[{path}](#/experiments/{meta['experiment_id']}/runs/{meta['run_id']}/artifactPath/{path}) "
            f"in this run's artifacts (`{path}` beside this file once downloaded; it needs `figures/{PLOTLY_JS}` "
            "beside it)")


def render_report(meta: dict, summary: list[str], sections: dict[str, str], missing: list[dict], notes: list[str]) -> str:
    out = [f"# Report: does a bigger teacher make a better student? ({meta['eval_set']})", "",
           f"Preset `{meta['preset']}`, evaluation set `{meta['eval_set']}`, experiment `{meta['experiment']}`, "
           f"generated {meta['generated']}. Read {meta['n_eval_runs']} FINISHED evaluate run(s) on this set, "
           f"{meta['n_errors_runs']} errors run(s), tokens run {meta['tokens_run'] or DASH}. "
           "Every run id used is in `inputs.json`.", "", "## Summary", ""]
    out += [f"- {line}" for line in summary]
    out += ["", "## Table 1: student accuracy by teacher (%)", "", sections["table1"], "",
            "CSV: `tables/table1.csv` (this table, numbers only), `tables/table1_cells.csv` (per cell: seeds, mean, "
            "std, min, max, interval, run ids).", "",
            "## Scoring robustness: Table 1 under both rules", "", sections["robustness"], "",
            "CSV: `tables/robustness.csv`, `tables/robustness_rankings.csv`.", "",
            "## Table 3: the teachers' own accuracy", "", sections["table3"], "",
            "## Paired tests between teachers (per student)", "", sections["paired"], "",
            "## Fig. 1: accuracy by teacher", "", _artifact_link(meta, "figures/fig1_accuracy.html"), "",
            "## Fig. 2: error categories", "", _artifact_link(meta, "figures/fig2_errors.html"), "",
            sections["errors"], "",
            "Shares are of the wrong answers the judge categorised (`judged`); counts are summed over the listed "
            "seeds.", "",
            "## Fig. 3: tokens per teacher answer", "", _artifact_link(meta, "figures/fig3_tokens.html"), "",
            sections["tokens"], "", "## Missing", ""]
    if not missing:
        out.append("Nothing: every expected input is present.")
    else:
        titles = {"cell": "Table 1 cells (teacher / student)", "seed": "Seeds of the preset not evaluated",
                  "teacher_eval": "Teacher evaluations (Table 3)", "baseline": "Baselines of untrained students",
                  "errors": "Errors runs (Fig. 2)", "tokens": "Token counts (Fig. 3)",
                  "predictions": "Unreadable predictions (paired tests)"}
        for kind, title in titles.items():
            items = [m for m in missing if m["kind"] == kind]
            if items:
                out += [f"### {title} ({len(items)})", ""]
                out += [f"- {m['what']}: {m['detail']}" if m["detail"] else f"- {m['what']}" for m in items]
                out.append("")
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(out).rstrip() + "\n"


def report_note(meta: dict, summary: list[str], md1: str) -> str:
    """The report run's description (Markdown): the summary and Table 1, with report.md one click away."""
    return "\n".join([f"**Report** on `{meta['eval_set']}` (preset `{meta['preset']}`): the full text is "
                      + _artifact_link(meta, "report.md").split(" in this run's")[0] + ".", ""]
                     + [f"- {line}" for line in summary]
                     + ["", "### Table 1: student accuracy by teacher (%)", "", md1])


def _known(name: str, teachers: list[str]) -> str:
    for t in teachers:
        if t.lower() == name.lower():
            return t
    raise DistillError(f"unknown teacher {name!r} in error_teachers; known teachers: {', '.join(teachers)} "
                       "(the preset's, and any mix with evaluated students)")


def _metric_name(text: str) -> str:
    return re.sub(r"[^\w.\- /]", "_", text)


def _save(df, md: str, folder: Path, name: str) -> None:
    df.to_csv(folder / f"{name}.csv", index=df.index.name is not None)
    (folder / f"{name}.md").write_text(md + "\n", encoding="utf-8")


def run(p: ReportParams) -> str:
    """Write the report and return its run id (an earlier report of identical inputs when reused)."""
    preset = load_preset(p.preset)
    eval_set = p.eval_set or preset.data.eval_set
    preset_teachers = grid_names(p.teachers, preset_list(preset, "teachers"), "teachers")
    preset_students = grid_names(p.students, preset_list(preset, "students"), "students")
    seeds_wanted = (list(p.seeds) if p.seeds
                    else [str(x) for x in preset.sft.seeds])
    error_teachers = (list(p.error_teachers) if p.error_teachers
                      else [str(t) for t in (preset.judge.teachers or preset_teachers[:1] + preset_teachers[-1:])])
    baseline_label = f"{preset.baseline.shots}-shot" if preset.baseline.shots else "few-shot"  # as evaluate tags it

    inputs = collect_inputs(eval_set, p.tokens_run)
    narrowed = bool(p.teachers or p.students)
    found_t = {t for t, _ in inputs.cells}
    found_s = {s for _, s in inputs.cells} | {s for b in inputs.baselines.values() for s in b}
    if narrowed:  # the grid a `main` ran: nothing of the experiment outside it
        found_t &= set(preset_teachers)
        found_s &= set(preset_students)
    teachers = ordered_names(preset_teachers, found_t)
    students = ordered_names(preset_students, found_s)
    table3_teachers = ordered_names(preset_teachers, set(inputs.teacher_evals) & set(preset_teachers)
                                    if narrowed else inputs.teacher_evals)
    error_teachers = [_known(t, teachers) for t in error_teachers]
    params = {"preset": preset.name, "eval_set": eval_set, "error_teachers": ",".join(error_teachers),
              "teachers": ",".join(preset_teachers), "students": ",".join(preset_students), "seeds": ",".join(seeds_wanted),
              "tokens_run": p.tokens_run, "inputs_digest": inputs.digest()}
    upstream = {"tokens_run_id": inputs.tokens_run.info.run_id if inputs.tokens_run is not None else ""}
    tags = {"distill.eval_set": eval_set}
    with tracking.phase_run("report", params, upstream, tags=tags, reuse=p.reuse) as pr:
        if pr.reused:
            return pr.run_id
        import mlflow
        import pandas as pd

        predictions = Predictions()
        cells = cell_summary(inputs, teachers, students)
        wide, md1 = table1(cells, inputs, teachers, preset_teachers, students, baseline_label)
        baseline_labels = [baseline_label] + sorted(set(inputs.baselines) - {baseline_label})
        robust, ranks, md_robust = robustness(cells, inputs, teachers, preset_teachers, students, baseline_labels)
        t3, md3 = table3(inputs, table3_teachers)
        paired, md_paired = paired_tests(inputs, teachers, students, predictions)
        errors_df, md_errors = error_summary(inputs, error_teachers, students)
        token_rows = load_tokens(inputs.tokens_run)
        tokenizers = ordered_names(preset_list(preset, "tokenizers"), {r.get("tokenizer") for r in token_rows} - {None})
        tokenizers = [k for k in tokenizers if any(r.get("tokenizer") == k for r in token_rows)]
        token_teachers = ordered_names(preset_teachers, {r.get("teacher") for r in token_rows} - {None})
        token_teachers = [t for t in token_teachers if any(r.get("teacher") == t for r in token_rows)]
        tok_df, md_tokens = tokens_summary(token_rows, token_teachers, tokenizers)
        grid = {"teachers": preset_teachers, "students": preset_students, "seeds": seeds_wanted,
                "tokenizers": preset_list(preset, "tokenizers")}
        missing = missing_items(inputs, grid, teachers, students, error_teachers, baseline_label, token_rows,
                                predictions)

        colors = teacher_colors(ordered_names(teachers, set(error_teachers) | set(token_teachers)))
        notes = []
        totals = sorted({int(r.n_total) for seeds in inputs.cells.values() for r in seeds.values()
                         if np.isfinite(r.n_total)})
        if len(totals) > 1:
            notes.append("The evaluations do not all cover the same number of questions (" +
                         ", ".join(map(str, totals)) + "): compare cells with care; the paired tests use only "
                         "the questions both evaluations share.")
        if inputs.superseded:
            notes.append(f"{len(inputs.superseded)} older evaluation(s) of an already evaluated (teacher, student, "
                         "seed) were left out (the newest wins): " + ", ".join(inputs.superseded))
        if not error_teachers:
            notes.append("No error teachers were chosen for Fig. 2.")

        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "tables").mkdir()
            (root / "figures").mkdir()
            _save(wide, md1, root / "tables", "table1")
            cells.to_csv(root / "tables" / "table1_cells.csv", index=False)
            _save(t3, md3, root / "tables", "table3")
            _save(robust, md_robust, root / "tables", "robustness")
            pd.DataFrame(ranks, columns=["student", "ranking_paper", "ranking_answer_line", "changed"]).to_csv(
                root / "tables" / "robustness_rankings.csv", index=False)
            _save(paired, md_paired, root / "tables", "paired_tests")
            _save(errors_df, md_errors, root / "tables", "errors")
            _save(tok_df, md_tokens, root / "tables", "tokens")
            write_plotlyjs(root / "figures")
            write_figure(figure_accuracy(cells, inputs, teachers, students, baseline_label),
                         root / "figures" / "fig1_accuracy", pr.run_id)
            write_figure(figure_errors(errors_df, error_teachers, students, colors), root / "figures" / "fig2_errors", pr.run_id)
            write_figure(figure_tokens(token_rows, token_teachers, tokenizers, colors), root / "figures" / "fig3_tokens", pr.run_id)
            experiment = mlflow.get_experiment(mlflow.get_run(pr.run_id).info.experiment_id)
            meta = {"preset": preset.name, "eval_set": eval_set, "experiment": experiment.name,
                    "experiment_id": experiment.experiment_id, "run_id": pr.run_id,
                    "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "n_eval_runs": inputs.n_eval_runs, "n_errors_runs": len(inputs.errors),
                    "tokens_run": inputs.tokens_run.info.run_id if inputs.tokens_run is not None else ""}
            summary = _summary_lines(wide, cells, paired, preset_teachers, students, missing)
            summary.append("Scoring robustness: " + robustness_verdict(ranks))
            report = render_report(meta, summary, {"table1": md1, "table3": md3, "paired": md_paired,
                                                   "errors": md_errors, "tokens": md_tokens, "robustness": md_robust},
                                   missing, notes)
            (root / "report.md").write_text(report, encoding="utf-8")
            (root / "missing.json").write_text(json.dumps(missing, indent=1, ensure_ascii=False), encoding="utf-8")
            (root / "inputs.json").write_text(json.dumps(inputs.run_ids(), indent=1), encoding="utf-8")
            mlflow.log_artifacts(tmp)
        for name, df in (("table1_cells", cells), ("table3", t3), ("paired_tests", paired), ("errors", errors_df),
                         ("tokens", tok_df)):
            if not df.empty:
                mlflow.log_table(data=df, artifact_file=f"tables/{name}.json")
        n_missing_cells = sum(m["kind"] == "cell" for m in missing)
        metrics = {"n_missing_cells": n_missing_cells, "n_missing": len(missing), "n_cells": len(cells),
                   "n_eval_runs": inputs.n_eval_runs, "n_paired_tests": int(paired["p_bootstrap"].notna().sum()),
                   "n_ranking_changes": sum(bool(r["changed"]) for r in ranks)}
        for t in teachers:
            if np.isfinite(wide.loc[t, "mean"]):
                metrics[_metric_name(f"accuracy_mean.{t}")] = float(wide.loc[t, "mean"])
        for r in cells.itertuples():
            metrics[_metric_name(f"accuracy.{r.teacher}.{r.student}")] = float(r.accuracy_mean)
        mlflow.log_metrics(metrics)
        mlflow.set_tags({"distill.missing_cells": str(n_missing_cells), "distill.missing": str(len(missing)),
                         "mlflow.note.content": report_note(meta, summary, md1)})
        print(f"[distill] report on {eval_set}: {len(cells)} cells, {n_missing_cells} missing, "
              f"{len(missing)} missing item(s) in all; run {pr.run_id}", file=sys.stderr)
        return pr.run_id
