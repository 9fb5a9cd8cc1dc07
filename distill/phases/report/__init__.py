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
- the reproduction of the paper: every number of its Table 1 and Table 3 beside this run's with the bootstrap
  interval, and each of its claims decided by the tests above (`tables/reproduction.{md,csv}`,
  `tables/reproduction_{claims,tests}.csv`, metrics `n_claims_*`); one line instead where the run is not
  comparable with the paper (`reproduction`, `claims`);
- error categories (`tables/errors.{md,csv}`) and token counts per teacher answer (`tables/tokens.{md,csv}`);
- Fig. 1-3 as plotly HTML that opens offline, each with a plotly JSON twin (`figures/`); plotly.js itself is
  stored once per experiment (`assets`);
- `report.md`, which puts it together and lists everything missing; `missing.json`; `inputs.json`.

Nothing missing is an error: an absent cell is shown as "—" and listed under "Missing".

Its parts: `inputs` finds and reads the runs, `tables` (Table 1, Table 3, errors, tokens), `robustness`,
`paired` and `reproduction` (with `paper_results`, `evidence`, `claims`) compute, `figures` draws, `missing`
lists what is absent, `document` writes report.md and the run's description; this module resolves the
parameters and logs it all as one run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from distill import DistillError
from distill.config import params
from distill.config.checks import SEED
from distill.config.names import did_you_mean, match_name, teacher_names
from distill.config.params import Default, param, resolve, reuse_param, upstream_param
from distill.config.params_text import lists_from_text
from distill.config.presets import load_preset
from distill.disk_full import writing
from distill.phases.report.assets import shared_plotlyjs
from distill.phases.report.document import render_report, report_note, summary_lines
from distill.phases.report.estimated_vs_actual import cost_table
from distill.phases.report.figures import figure_accuracy, figure_errors, figure_tokens, teacher_colors, write_figure
from distill.phases.report.inputs import Predictions, collect_inputs, load_tokens, ordered_names
from distill.phases.report.missing import missing_items
from distill.phases.report.paired import holm, paired_tests  # noqa: F401 - holm: tests import it from here
from distill.phases.report.reproduction import reproduction
from distill.phases.report.robustness import robustness, robustness_verdict
from distill.phases.report.tables import cell_summary, error_summary, table1, table3, tokens_summary
from distill.tracking import lineage, phase_runs

console = logging.getLogger(__name__)


@dataclass
class ReportParams:
    """Tables 1 and 3, Fig. 1-3 and paired significance tests from the runs in the experiment."""

    preset: str = param("offline", help="`offline`, `paper`, or a preset file: the order of teachers and students, "
                                        "the eval set, the judged teachers")
    eval_set: str = param("", preset="data.eval_set", help="only evaluations on this set are read")
    error_teachers: list[str] = param(factory=list, help="comma-separated teachers of Fig. 2 (the paper: 7B, 72B)",
                                      preset=Default("preset's `judge.teachers`, else the first and the last teacher"))
    tokens_run: str = upstream_param("the `tokens` run of Fig. 3", "newest")
    teachers: list[str] = param(factory=list, preset=Default("preset's `teachers`"),
                                help="comma-separated: the grid Table 1, the figures and **Missing** cover (`main` "
                                     "passes the grid it ran; evaluations outside it are left out)")
    students: list[str] = param(factory=list, preset=Default("preset's `students`"), help="as `teachers`")
    seeds: list[str] = param(factory=list, preset="sft.seeds", rule=SEED, help="as `teachers`: the seeds **Missing** "
                                                                               "expects")
    reuse: bool = reuse_param(False, "`true` reuses an earlier report only if it read exactly the same input runs "
                                     "with the same code")

    __post_init__ = lists_from_text  # comma-joined text -> list[str], here only


def grid_names(given: list[str], known: list[str], what: str) -> list[str]:
    """[7B, 72b] -> the preset's spelling of each; empty: all of the preset's."""
    if not given:
        return known
    out = []
    for name in given:
        match = match_name(name, known)
        if match is None:
            guess = did_you_mean(name, known).strip()
            raise DistillError(f"unknown name {name!r} in {what}; known {what}: {', '.join(known)}"
                               + (f"; {guess}" if guess else ""))
        out.append(match)
    return out


def preset_list(preset, key: str) -> list[str]:
    return [str(k) for k in getattr(preset, key)]


def _known(name: str, teachers: list[str]) -> str:
    match = match_name(name, teachers)
    if match is not None:
        return match
    raise DistillError(f"unknown teacher {name!r} in error_teachers; {did_you_mean(name, teachers)}"
                       f"known teachers: {', '.join(teachers)} "
                       "(the preset's, and any mix with evaluated students)")


def _metric_name(text: str) -> str:
    return re.sub(r"[^\w.\- /]", "_", text)


def _save(df, md: str, folder: Path, name: str) -> None:
    df.to_csv(folder / f"{name}.csv", index=df.index.name is not None)
    (folder / f"{name}.md").write_text(md + "\n", encoding="utf-8")


def narrowed(p: ReportParams) -> bool:
    """Teachers or students given: the grid a `main` ran, nothing of the experiment outside it."""
    return bool(p.teachers or p.students)


def resolve_settings(p: ReportParams, preset) -> ReportParams:
    """The parameters resolved against the preset: the grid in its spelling, the error teachers chosen."""
    p = resolve(p, preset)
    teachers = grid_names(p.teachers, preset_list(preset, "teachers"), "teachers")
    students = grid_names(p.students, preset_list(preset, "students"), "students")
    for part in (n for t in p.error_teachers for n in teacher_names(t)):  # a typo: refused before the grid is built
        _known(part, preset_list(preset, "teachers"))
    error_teachers = [match_name(t, teachers) or t for t in p.error_teachers] or \
        [str(t) for t in (preset.judge.teachers or teachers[:1] + teachers[-1:])]
    return dataclasses.replace(p, teachers=teachers, students=students, error_teachers=error_teachers)


def reuse_key(p: ReportParams, preset, inputs_digest: str) -> dict:
    """The payload of report(p)'s reuse key, given the digest of the runs it reads (its upstream: the tokens run)."""
    return params.key_payload(resolve_settings(p, preset), preset, narrowed=narrowed(p), inputs_digest=inputs_digest)


def run(p: ReportParams) -> str:
    """Write the report and return its run id (an earlier report of identical inputs when reused)."""
    preset = load_preset(p.preset)
    narrow, p = narrowed(p), resolve_settings(p, preset)
    eval_set, preset_teachers, preset_students = p.eval_set, p.teachers, p.students
    seeds_wanted, error_teachers = p.seeds, p.error_teachers
    baseline_label = f"{preset.baseline.shots}-shot" if preset.baseline.shots else "few-shot"  # as evaluate tags it

    inputs = collect_inputs(eval_set, p.tokens_run)
    found_t = {t for t, _ in inputs.cells}
    found_s = {s for _, s in inputs.cells} | {s for b in inputs.baselines.values() for s in b}
    if narrow:
        found_t &= set(preset_teachers)
        found_s &= set(preset_students)
    teachers = ordered_names(preset_teachers, found_t)
    students = ordered_names(preset_students, found_s)
    table3_teachers = ordered_names(preset_teachers, set(inputs.teacher_evals) & set(preset_teachers)
                                    if narrow else inputs.teacher_evals)
    error_teachers = [_known(t, teachers) for t in error_teachers]
    logged = {"preset": preset.name, "eval_set": eval_set, "error_teachers": ",".join(error_teachers),
              "teachers": ",".join(preset_teachers), "students": ",".join(preset_students),
              "seeds": ",".join(seeds_wanted), "tokens_run": p.tokens_run, "inputs_digest": inputs.digest()}
    upstream = {"tokens_run_id": inputs.tokens_run.info.run_id if inputs.tokens_run is not None else ""}
    tags = {lineage.EVAL_SET: eval_set}
    with phase_runs.phase_run("report", logged, upstream, tags=tags, reuse=p.reuse,
                            key=params.key_payload(p, preset, narrowed=narrow, inputs_digest=inputs.digest())) as pr:
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
        repro = reproduction(preset, eval_set, inputs, predictions, wide, t3)
        errors_df, md_errors = error_summary(inputs, error_teachers, students)
        token_rows = load_tokens(inputs.tokens_run)
        tokenizers = ordered_names(preset_list(preset, "tokenizers"),
                                   {r.get("tokenizer") for r in token_rows} - {None})
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

        experiment = mlflow.get_experiment(mlflow.get_run(pr.run_id).info.experiment_id)
        asset = shared_plotlyjs(experiment.experiment_id)
        with tempfile.TemporaryDirectory() as tmp, writing("report tables and figures", tmp):
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
            (root / "tables" / "reproduction.md").write_text(repro.section + "\n", encoding="utf-8")
            (root / "tables" / "reproduction_summary.md").write_text(repro.summary + "\n", encoding="utf-8")
            if repro.claims:
                for name, df in zip(("reproduction", "reproduction_claims", "reproduction_tests"), repro.tables()):
                    df.to_csv(root / "tables" / f"{name}.csv", index=False)
            _save(errors_df, md_errors, root / "tables", "errors")
            _save(tok_df, md_tokens, root / "tables", "tokens")
            cost = cost_table(inputs)  # what the runs behind it cost, beside the plan's estimates
            _save(cost.df, cost.md, root / "tables", "estimated_vs_actual")
            write_figure(figure_accuracy(cells, inputs, teachers, students, baseline_label),
                         root / "figures" / "fig1_accuracy", asset)
            write_figure(figure_errors(errors_df, error_teachers, students, colors),
                         root / "figures" / "fig2_errors", asset)
            write_figure(figure_tokens(token_rows, token_teachers, tokenizers, colors),
                         root / "figures" / "fig3_tokens", asset)
            meta = {"preset": preset.name, "eval_set": eval_set, "experiment": experiment.name,
                    "experiment_id": experiment.experiment_id, "run_id": pr.run_id, "plotly_run_id": asset.run_id,
                    "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "n_eval_runs": inputs.n_eval_runs, "n_errors_runs": len(inputs.errors),
                    "tokens_run": inputs.tokens_run.info.run_id if inputs.tokens_run is not None else ""}
            summary = summary_lines(wide, cells, paired, preset_teachers, students, missing)
            summary.append("Scoring robustness: " + robustness_verdict(ranks))
            summary.append(repro.line)
            report = render_report(meta, summary, {"table1": md1, "table3": md3, "paired": md_paired,
                                                   "reproduction": repro.section,
                                                   "errors": md_errors, "tokens": md_tokens, "robustness": md_robust},
                                   missing, notes) + "\n" + cost.section + "\n"
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
                   "n_ranking_changes": sum(bool(r["changed"]) for r in ranks), **repro.metrics()}
        for t in teachers:
            if np.isfinite(wide.loc[t, "mean"]):
                metrics[_metric_name(f"accuracy_mean.{t}")] = float(wide.loc[t, "mean"])
        for r in cells.itertuples():
            metrics[_metric_name(f"accuracy.{r.teacher}.{r.student}")] = float(r.accuracy_mean)
        mlflow.log_metrics(metrics)
        mlflow.set_tags({lineage.MISSING_CELLS: str(n_missing_cells), lineage.MISSING: str(len(missing)),
                         "mlflow.note.content": report_note(meta, summary, md1)})
        console.info(f"report on {eval_set}: {len(cells)} cells, {n_missing_cells} missing, "
                     f"{len(missing)} missing item(s) in all; run {pr.run_id}")
        return pr.run_id
