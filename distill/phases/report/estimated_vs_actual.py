"""The report's "estimated vs actual" table: per phase, what the runs behind the report cost and what the plan
expected of them.

The runs are the report's inputs (every evaluation, errors and tokens run it read) and, through their upstream
tags (`distill.*_run_id`), every run those were built from: the sft runs, the selection, the teachers, the
translation. Each step of a `main` (or of an entry point that builds its upstream) logged on its run
`wall_seconds`, `gpu_seconds` (wall x the GPUs it held; 0 on CPU) and, where the estimate models the step,
`estimated_wall_seconds` and `estimated_gpu_seconds` (distill.pipeline.step_time). A run made alone carries
none and is counted as not timed. actual / estimated compares the runs that carry both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from distill.estimates.cost_metrics import ESTIMATED_GPU_SECONDS, ESTIMATED_WALL, GPU_SECONDS, WALL
from distill.tracking import lineage

RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")
PHASES = ("translate", "teacher", "select", "sft", "evaluate", "errors", "tokens")
DASH = "—"


@dataclass
class CostTable:
    df: object        # pandas.DataFrame, one row per phase
    md: str
    section: str      # the report.md section


def lineage_runs(run_ids: list[str]) -> list:
    """The runs and every run they were built from, once each, by their upstream tags."""
    from mlflow.tracking import MlflowClient

    client, seen, out, todo = MlflowClient(), set(), [], list(run_ids)
    while todo:
        run_id = todo.pop()
        if run_id in seen:
            continue
        seen.add(run_id)
        try:
            run = client.get_run(run_id)
        except Exception:  # noqa: BLE001 - a deleted upstream run: nothing to count
            continue
        out.append(run)
        for key, value in run.data.tags.items():
            if key.startswith("distill.") and "_run_id" in key and key != lineage.REPORT_RUN_ID:
                todo += RUN_ID.findall(value)
    return out


def _sum(runs, metric: str) -> float | None:
    values = [r.data.metrics[metric] for r in runs if metric in r.data.metrics]
    return sum(values) if values else None


def cost_table(inputs) -> CostTable:
    """The table for the report whose inputs are `inputs` (distill.phases.report.inputs)."""
    import pandas as pd

    runs = [r for r in lineage_runs([i for ids in inputs.run_ids().values() for i in ids])
            if r.data.tags.get(lineage.PHASE) in PHASES]
    rows = []
    for phase in PHASES:
        mine = [r for r in runs if r.data.tags[lineage.PHASE] == phase]
        if not mine:
            continue
        timed = [r for r in mine if WALL in r.data.metrics]
        both = [r for r in timed if ESTIMATED_WALL in r.data.metrics]
        est_wall, act_wall = _sum(both, ESTIMATED_WALL), _sum(both, WALL)
        rows.append({"phase": phase, "runs": len(mine), "timed": len(timed), "estimated": len(both),
                     "actual_wall_min": (_sum(timed, WALL) or 0) / 60 if timed else None,
                     "actual_gpu_h": (_sum(timed, GPU_SECONDS) or 0) / 3600 if timed else None,
                     "estimated_wall_min": est_wall / 60 if est_wall is not None else None,
                     "estimated_gpu_h": (_sum(both, ESTIMATED_GPU_SECONDS) or 0) / 3600 if both else None,
                     "actual_over_estimated_wall": act_wall / est_wall if both and est_wall else None})
    df = pd.DataFrame(rows, columns=["phase", "runs", "timed", "estimated", "actual_wall_min", "actual_gpu_h",
                                     "estimated_wall_min", "estimated_gpu_h", "actual_over_estimated_wall"])
    return CostTable(df, _markdown(df), _section(df))


def _markdown(df) -> str:
    fmt = lambda x, d=3: DASH if x is None or x != x else f"{x:.{d}f}"  # noqa: E731 - NaN: not there
    out = ["| phase | runs | timed | with an estimate | actual wall (min) | actual GPU-h | estimated wall (min) | "
           "estimated GPU-h | actual / estimated wall |", "|---|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        out.append(f"| {r.phase} | {r.runs} | {r.timed} | {r.estimated} | {fmt(r.actual_wall_min, 1)} | "
                   f"{fmt(r.actual_gpu_h)} | {fmt(r.estimated_wall_min, 1)} | {fmt(r.estimated_gpu_h)} | "
                   f"{fmt(r.actual_over_estimated_wall, 2)} |")
    if df.empty:
        out.append(f"| {DASH} | 0 | 0 | 0 | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} |")
    return "\n".join(out)


def _section(df) -> str:
    return "\n".join(["## Estimated vs actual cost per phase", "",
                      "The runs behind this report and those they were built from. Actual: `wall_seconds` and "
                      "`gpu_seconds` (wall time x the GPUs the step held; 0 on CPU) that each step of `main` logged "
                      "on its run; a run made alone is not timed. Estimated: what `main -P plan=true` would have "
                      "printed for the step (distill/estimates/), logged beside it; a step the estimates do not "
                      "model (on CPU, a stand-in of the rehearsal, a model of unknown size) has none. actual / "
                      "estimated compares the runs that have both.", "", _markdown(df), "",
                      "CSV: `tables/estimated_vs_actual.csv`."])
