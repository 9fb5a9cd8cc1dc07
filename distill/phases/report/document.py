"""report.md and the report run's description: the summary lines and the document around the tables."""

from __future__ import annotations

import numpy as np

from distill.phases.report.assets import PLOTLY_JS
from distill.phases.report.tables import DASH
from distill.tracking import ui_links


def summary_lines(wide, cells, paired, preset_teachers, students, missing) -> list[str]:
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
    shared = meta.get("plotly_run_id")
    needs = (f"plotly.js is the experiment's, `figures/{PLOTLY_JS}` of run {shared}, which it finds where it can; "
             f"a copy beside it serves where it cannot") if shared else f"it needs `figures/{PLOTLY_JS}` beside it"
    link = ui_links.markdown(path, ui_links.run_page(meta["experiment_id"], meta["run_id"], path))
    return (f"{link} "
            f"in this run's artifacts (`{path}` beside this file once downloaded; {needs})")


def render_report(meta: dict, summary: list[str], sections: dict[str, str], missing: list[dict],
                  notes: list[str]) -> str:
    out = [f"# Report: does a bigger teacher make a better student? ({meta['eval_set']})", "",
           f"Preset `{meta['preset']}`, evaluation set `{meta['eval_set']}`, experiment `{meta['experiment']}`, "
           f"generated {meta['generated']}. Read {meta['n_eval_runs']} FINISHED evaluate run(s) on this set, "
           f"{meta['n_errors_runs']} errors run(s), tokens run {meta['tokens_run'] or DASH}. "
           "Every run id used is in `inputs.json`.", "", "## Summary", ""]
    out += [f"- {line}" for line in summary]
    if sections.get("reproduction"):  # the paper's numbers and claims beside this run's (report/reproduction.py)
        out += ["", sections["reproduction"]]
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
