"""Paired tests between every two teachers of a student on the same questions: paired bootstrap,
exact McNemar, and Holm's adjustment over the comparisons of one student."""

from __future__ import annotations

import math

import numpy as np

from distill.phases.report.inputs import Inputs, Predictions
from distill.phases.report.tables import DASH, fmt, fmt_p, md_table
from distill.scoring.stats import mcnemar, paired_bootstrap


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
    row = dict.fromkeys(PAIRED_COLUMNS, math.nan)
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
    md_rows = [[r.student, r.teacher_a, r.teacher_b, r.seeds,
                int(r.n_questions) if np.isfinite(r.n_questions) else DASH,
                fmt(r.accuracy_a), fmt(r.accuracy_b), fmt(r.diff, 2) if not np.isfinite(r.diff) else f"{r.diff:+.2f}",
                f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]" if np.isfinite(r.ci_low) else DASH, fmt_p(r.p_bootstrap),
                f"{int(r.only_a)} / {int(r.only_b)}" if np.isfinite(r.only_a) else DASH, fmt_p(r.p_mcnemar),
                fmt_p(r.p_mcnemar_holm), r.note] for r in df.itertuples()]
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
