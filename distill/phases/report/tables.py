"""The report's tables as a numeric frame (CSV) and Markdown: Table 1, Table 3, error categories, tokens."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from distill.phases.report.inputs import CATEGORIES, Inputs, error_counts

DASH = "—"


def fmt(x: float, digits: int = 2) -> str:
    return DASH if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def nanmean(values) -> float:
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
                "ci_low": nanmean(r.ci_low for r in runs), "ci_high": nanmean(r.ci_high for r in runs),
                "seed_accuracies": ",".join(f"{a:.4g}" for a in accs),
                "n_total": runs[0].n_total, "run_ids": ",".join(r.run_id for r in runs),
                # NaN unless every seed logged it: a mean over some seeds would not be comparable
                "accuracy_answer_line_mean": float(np.mean([r.accuracy_answer_line for r in runs])),
            })
    columns = ["teacher", "student", "n_seeds", "seeds", "accuracy_mean", "accuracy_std", "accuracy_min",
               "accuracy_max", "ci_low", "ci_high", "seed_accuracies", "n_total", "run_ids",
               "accuracy_answer_line_mean"]
    return pd.DataFrame(rows, columns=columns)


def table1(cells, inputs: Inputs, teachers: list[str], preset_teachers: list[str], students: list[str],
           baseline_label: str):
    """The paper's Table 1: a wide numeric frame (CSV) and its Markdown with spread and footnotes."""
    import pandas as pd

    by_cell = {(r.teacher, r.student): r for r in cells.itertuples()}
    wide = pd.DataFrame(index=pd.Index([], name="teacher"), columns=students + ["mean"], dtype=float)
    for teacher in teachers:
        values = [by_cell[(teacher, s)].accuracy_mean if (teacher, s) in by_cell else math.nan for s in students]
        wide.loc[teacher] = values + [nanmean(values)]
    size_rows = [t for t in preset_teachers if t in wide.index]
    col_means = [nanmean(wide.loc[size_rows, s]) if size_rows else math.nan for s in students]
    grand = [by_cell[(t, s)].accuracy_mean for t in preset_teachers for s in students if (t, s) in by_cell]
    wide.loc["mean"] = col_means + [nanmean(grand)]
    labels = [baseline_label] + sorted(set(inputs.baselines) - {baseline_label})
    baseline_rows = []  # each baseline, then its cut-at-the-next-question variant where logged
    for label in labels:
        runs = inputs.baselines.get(label, {})
        values = [runs[s].accuracy if s in runs else math.nan for s in students]
        wide.loc[label] = values + [nanmean(values)]
        baseline_rows.append(label)
        cut = [runs[s].accuracy_cut if s in runs else math.nan for s in students]
        if any(np.isfinite(cut)):
            wide.loc[f"{label}, {CUT_LABEL}"] = cut + [nanmean(cut)]
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
            text = fmt(c.accuracy_mean)
            if c.n_seeds > 1:
                text += f" ± {fmt(c.accuracy_std)} (n={c.n_seeds})"
            if np.isfinite(best[s]) and abs(c.accuracy_mean - best[s]) < 1e-9 and n_best[s] == 1:
                text = f"**{text}**"
            row.append(text)
        n_present = sum((teacher, s) in by_cell for s in students)
        mean_text = fmt(wide.loc[teacher, "mean"])
        if 0 < n_present < len(students):
            mean_text += "†"
            partial = True
        rows.append(row + [mean_text])
    mean_row = ["mean"]
    for s in students:
        n_present = sum((t, s) in by_cell for t in size_rows)
        text = fmt(wide.loc["mean", s])
        if 0 < n_present < len(size_rows) or (n_present and len(size_rows) < len(preset_teachers)):
            text += "†"
            partial = True
        mean_row.append(text)
    rows.append(mean_row + [fmt(wide.loc["mean", "mean"])])
    for label in baseline_rows:
        present = [s for s in students if np.isfinite(wide.loc[label, s])]
        mean_text = fmt(wide.loc[label, "mean"]) + ("†" if 0 < len(present) < len(students) else "")
        rows.append([label] + [fmt(wide.loc[label, s]) for s in students] + [mean_text])
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
            md_rows.append([r.teacher, fmt(r.accuracy), f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]",
                            f"{int(r.n_correct)}/{int(r.n_total)}" if np.isfinite(r.n_total) else DASH])
    md = md_table(["teacher", "accuracy (%)", "95% bootstrap interval", "correct / total"], md_rows)
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
                c = error_counts(run)
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
               + [f"{int(r[f'errors_{s}'])} ({fmt(100 * r[f'errors_{s}_frac'], 1)}%)" for _, s, _ in CATEGORIES]
               for _, r in df.iterrows()]
    md = md_table(["teacher", "student", "seeds", "wrong", "judged"] + [label for _, _, label in CATEGORIES], md_rows)
    return df, md


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
    md_rows = [[r.tokenizer, r.teacher, r.n, fmt(r.tokens_mean, 1), fmt(r.tokens_median, 1),
                f"{fmt(r.tokens_q1, 1)}–{fmt(r.tokens_q3, 1)}", fmt(r.steps_mean, 2),
                fmt(100 * r.uses_decimal_frac, 1)] for r in summary.itertuples()]
    md = md_table(["tokenizer", "teacher", "answers", "mean tokens", "median", "IQR", "mean steps",
                   "answers with decimals (%)"], md_rows)
    return summary, md
