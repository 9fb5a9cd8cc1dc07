"""Table 1 under the paper's scoring rule and the answer-line rule side by side, and whether a
teacher ranking changes between them: how much the paper's conclusion depends on its scoring."""

from __future__ import annotations

import numpy as np

from distill.phases.report.inputs import Inputs
from distill.phases.report.tables import DASH, fmt, md_table


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
    # each row: student -> (paper's rule, answer-line rule); the teachers' cells, then the baselines
    readings = [(t, {s: (by_cell[(t, s)].accuracy_mean, by_cell[(t, s)].accuracy_answer_line_mean)
                     for s in students if (t, s) in by_cell}) for t in teachers]
    readings += [(label, {s: (r.accuracy, r.accuracy_answer_line) for s, r in inputs.baselines.get(label, {}).items()})
                 for label in baseline_labels]
    rows, md_rows = [], []
    for name, by_student in readings:
        line = [name]
        for s in students:
            if s not in by_student:
                line.append(DASH)
                continue
            paper, answer_line = by_student[s]
            rows.append({"row": name, "student": s, "accuracy_paper": paper, "accuracy_answer_line": answer_line,
                         "difference": answer_line - paper})
            line.append(f"{fmt(paper)} / {fmt(answer_line)}")
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
