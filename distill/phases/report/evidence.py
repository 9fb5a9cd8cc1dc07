"""This run's answers, question by question, in the paper's terms: the arms a claim compares, and the test
between two arms (paired bootstrap; exact McNemar where each arm is one binary answer per question)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from distill.phases.report.inputs import EvalRun, Inputs, Predictions
from distill.scoring.stats import mcnemar, paired_bootstrap


@dataclass
class Arm:
    """Per-question correctness: `mean` over seeds (or over students, for a teacher's mean), and `binary`, one
    answer per question (the first seed of one cell), where the exact McNemar test can use it."""

    mean: dict[str, float]
    binary: dict[str, bool] | None


class Evidence:
    """The arms of the paper's cells, found by the paper's labels (mapped to this grid's names by model id)."""

    def __init__(self, inputs: Inputs, predictions: Predictions, teacher_names: dict[str, str],
                 student_names: dict[str, str], baseline_label: str):
        self.inputs, self.predictions = inputs, predictions
        self.teacher_names, self.student_names, self.baseline_label = teacher_names, student_names, baseline_label
        for name in ("cell", "baseline", "teacher", "teacher_mean"):  # asked for by several claims: built once
            setattr(self, name, cache(getattr(self, name)))

    def _runs_arm(self, runs: list[EvalRun]) -> Arm | None:
        """None where a run is absent or its predictions unreadable (the report's Missing lists those)."""
        loaded = [self.predictions.get(r.run_id) for r in runs]
        if not runs or any(p is None for p in loaded):
            return None
        ids = set.intersection(*[set(p) for p in loaded])
        mean = {i: sum(p[i] for p in loaded) / len(loaded) for i in ids}
        return Arm(mean, {i: loaded[0][i] for i in ids})

    def cell(self, teacher: str, student: str) -> Arm | None:
        runs = self.inputs.cells.get((self.teacher_names.get(teacher, ""), self.student_names.get(student, "")), {})
        return self._runs_arm(list(runs.values()))

    def baseline(self, student: str) -> Arm | None:
        run = self.inputs.baselines.get(self.baseline_label, {}).get(self.student_names.get(student, ""))
        return self._runs_arm([run] if run else [])

    def teacher(self, teacher: str) -> Arm | None:
        run = self.inputs.teacher_evals.get(self.teacher_names.get(teacher, ""))
        return self._runs_arm([run] if run else [])

    def teacher_mean(self, teacher: str) -> Arm | None:
        """The mean over every student of the paper of this teacher's students (Table 1's mean column), per
        question: each question's correctness averaged over the students (and their seeds)."""
        arms = [self.cell(teacher, s) for s in self.student_names]
        if not arms or any(a is None for a in arms):
            return None
        ids = set.intersection(*[set(a.mean) for a in arms])
        return Arm({i: sum(a.mean[i] for a in arms) / len(arms) for i in ids}, None)


def compare(a: Arm, b: Arm, margin: float = 0.0) -> dict:
    """a − b in points on the questions both have, against `margin` points: the difference and its 95%
    paired-bootstrap interval, and the p of the test that decides (exact McNemar where both arms are single
    binary answers and the margin is 0, else the two-sided paired-bootstrap p of `a − b = margin`).

    The bootstrap adds one pseudo-question each way (a right and b wrong, a wrong and b right; Bonett and Price's
    adjustment of a paired difference): without it, answers that are all alike (as on the rehearsal's 2 questions)
    resample to a single point, an interval of width 0 and p = 0, as if a handful of questions were certain. On
    1,069 questions it moves the interval by about 0.1 points."""
    ids = sorted(set(a.mean) & set(b.mean), key=lambda i: (len(i), i))
    row = {"n_questions": len(ids), "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_bootstrap": math.nan,
           "only_a": math.nan, "only_b": math.nan, "p_mcnemar": math.nan, "test": "", "p": math.nan}
    if not ids:
        return row
    va = np.array([a.mean[i] for i in ids] + [1.0, 0.0]) - margin / 100   # the last two: the pseudo-questions
    vb = np.array([b.mean[i] for i in ids] + [0.0, 1.0])
    boot = paired_bootstrap(va, vb)
    boot["diff"] = 100 * float(va[:-2].mean() - vb[:-2].mean())          # the difference shown: the questions' own
    back = {k: round(boot[k] + margin, 9) + 0.0 for k in ("diff", "ci_low", "ci_high")}  # no -0.00 from the shift
    row.update({**back, "p_bootstrap": boot["p_bootstrap"], "test": "paired bootstrap", "p": boot["p_bootstrap"]})
    if margin == 0 and a.binary is not None and b.binary is not None:
        mc = mcnemar([a.binary[i] for i in ids], [b.binary[i] for i in ids])
        row.update({**mc, "test": "exact McNemar", "p": mc["p_mcnemar"]})
    return row
