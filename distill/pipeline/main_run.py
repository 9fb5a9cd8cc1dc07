"""The `main` run, whichever executor runs the grid: its params and tags, its heartbeat, the dead tries it
marks KILLED, and what it records at the end (metrics, steps.json, its description).

A `main` killed with `kill -9` (or with its machine) cannot end its run. Like a step's run, the main run
carries the cache key of its grid (lineage.CACHE_KEY, from its params less how it runs: the executor) and a
heartbeat a daemon thread renews; so does the run `mlflow run` opened for it (MLFLOW_RUN_ID), which is the
main run itself under `--experiment-name`, else a run of its own in the Default experiment. The next `main`
of the same grid marks those that are dead KILLED (distill.killed_reason) when it starts: at once when they ran
on this machine and their process is gone (key_locks.process_gone), else once their heartbeat stopped. When it ends
it marks every dead run of its experiments KILLED, whatever its work: what a killed `main` left RUNNING in a step
this one did not reach (or reused from elsewhere) is not left RUNNING after it. A ^C or SIGTERM ends it KILLED.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from distill.config import params
from distill.pipeline import planner
from distill.tracking import cache_keys, key_locks, lineage, phase_runs, ui_links
from distill.tracking.registry import registered_name

console = logging.getLogger(__name__)

# The run `mlflow run` opened for this `main` (MLFLOW_RUN_ID), noted before the preset's experiment takes
# it out of the environment (distill.tracking.store.use_preset_experiment); set by distill.pipeline.prepare.
CLI_RUN_ID: str | None = None


@dataclass
class Main:
    run_id: str
    experiment_id: str
    params: dict
    key: str


def key_payload(p, grid: planner.Grid) -> dict:
    """The payload of the grid's key: `main`'s keyed parameters (not how it runs: the executor), as the grid
    resolved them. The same for either executor."""
    resolved = dataclasses.replace(p, teachers=list(grid.teachers), students=list(grid.students),
                                   seeds=[str(s) for s in grid.seeds], limit=grid.limit, backend=grid.backend)
    return params.key_payload(resolved, grid.preset, judge=grid.judge)


def grid_key(p, grid: planner.Grid) -> str:
    return cache_keys.cache_key("pipeline", key_payload(p, grid))


def _cli_run(main_run_id: str):
    """`mlflow run`'s run when it is another run than the main run (and still there), else None."""
    if not CLI_RUN_ID or CLI_RUN_ID == main_run_id:
        return None
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient().get_run(CLI_RUN_ID)
    except Exception:  # noqa: BLE001 - a run id from another store: nothing to beat
        return None


def mark_dead(key: str, me: str, cli_experiment: str | None) -> None:
    """Earlier tries of this grid (or build) that are dead: parent runs here, `mlflow run`'s in its experiment."""
    try:
        key_locks.mark_dead(key, me)
        if cli_experiment:
            tries = lineage.search_phase_runs(status="RUNNING", tags={lineage.CACHE_KEY: key},
                                              experiment_ids=[cli_experiment])
            key_locks.mark_dead(key, me, tries)
    except Exception as e:  # noqa: BLE001 - marking others is housekeeping; this run goes on
        console.warning(f"could not mark dead runs of this grid KILLED ({type(e).__name__}: {e})")


def mark_all_dead(me: str, experiment_id: str, cli_experiment: str | None) -> None:
    """Every dead run of this run's experiment (and `mlflow run`'s), whatever its work (key_locks.mark_dead_in)."""
    try:
        key_locks.mark_dead_in([experiment_id, *([cli_experiment] if cli_experiment else [])], me)
    except Exception as e:  # noqa: BLE001 - housekeeping, as mark_dead
        console.warning(f"could not mark dead runs KILLED ({type(e).__name__}: {e})")


@contextmanager
def main_run(p, grid: planner.Grid) -> Iterator[Main]:
    """The main run, started with its params and tags, beating (and `mlflow run`'s with it) until it ends."""
    params = planner.main_params(p, grid)
    tags = {lineage.PHASE: "main", **({lineage.REHEARSAL: "true"} if p.rehearsal else {})}
    with parent_run(f"main-{grid.preset.name}", params, grid_key(p, grid), tags) as main:
        yield main


@contextmanager
def parent_run(run_name: str, params: dict, key: str, tags: dict[str, str]) -> Iterator[Main]:
    """A run that steps nest under (`main`'s, or an entry point's that builds its upstream): started with
    its params, tags and the cache key of what it runs, beating, and `mlflow run`'s run with it, until it
    ends; dead earlier tries of the same key are marked KILLED when it starts, every dead run when it ends."""
    import mlflow
    from mlflow.tracking import MlflowClient

    beat = {lineage.CACHE_KEY: key, lineage.HEARTBEAT: f"{time.time():.3f}", **key_locks.whereabouts()}
    with ExitStack() as stack:
        run = stack.enter_context(mlflow.start_run(run_name=run_name, tags={**tags, **beat}))
        stack.enter_context(key_locks.Heartbeat(run.info.run_id))
        cli = _cli_run(run.info.run_id)
        if cli is not None:
            client = MlflowClient()
            for k, v in beat.items():
                client.set_tag(cli.info.run_id, k, v)
            stack.enter_context(key_locks.Heartbeat(cli.info.run_id))
        cli_experiment = (cli.info.experiment_id
                          if cli is not None and cli.info.experiment_id != run.info.experiment_id else None)
        mark_dead(key, run.info.run_id, cli_experiment)
        phase_runs.log_params_merged(run, params)
        try:
            ui_links.label_experiment(MlflowClient(), run.info.experiment_id, created=False)
        except Exception as e:  # noqa: BLE001 - a user who may log runs but not tag the experiment: no study view
            console.warning(f"could not add the study's runs-table view to the experiment ({type(e).__name__})")
        try:
            yield Main(run.info.run_id, run.info.experiment_id, params, key)
        finally:
            mark_all_dead(run.info.run_id, run.info.experiment_id, cli_experiment)
    label = tags.get(lineage.ENTRY_POINT) or tags.get(lineage.PHASE, "main")
    console.info(f"{label}: " + ui_links.where_to_look(
        mlflow.get_tracking_uri(), ui_links.run_page(run.info.experiment_id, run.info.run_id)))


def run_link(text: str, experiment_id: str, run_id: str, artifact: str = "") -> str:
    """A link the MLflow UI follows from any host, in Model training mode: its run page (or an artifact in it)."""
    return ui_links.markdown(text, ui_links.run_page(experiment_id, run_id, artifact))


def main_note(preset: str, params: dict, log: list[dict], report_run: str, experiment_id: str) -> str:
    """The main run's description (Markdown): the grid, Table 1 inline with links to the report, and
    every step's run, reused or not."""
    reused = sum(s["reused"] for s in log)
    try:
        table = phase_runs.read_text_artifact(report_run, "tables/table1.md").strip()
    except Exception as e:  # noqa: BLE001 - the description still links the report
        table = f"(Table 1 could not be read: {type(e).__name__})"
    try:  # the report's verdict on the paper's claims (report/reproduction.py); a report before it has none
        reproduction = ["", phase_runs.read_text_artifact(report_run, "tables/reproduction_summary.md").strip()]
    except Exception:  # noqa: BLE001 - the description goes on without it
        reproduction = []
    out = [f"**distill `main`, preset `{preset}`**: teachers {params['teachers']} x students {params['students']} "
           f"x seeds {params['seeds']}; {params['limit'] or 'all'} evaluation questions each.", "",
           f"**Table 1** below; the full report: {run_link('report run', experiment_id, report_run)}, "
           f"{run_link('report.md', experiment_id, report_run, 'report.md')}, "
           f"{run_link('Fig. 1', experiment_id, report_run, 'figures/fig1_accuracy.html')}. "
           f"The {ui_links.markdown('student evaluations by teacher', ui_links.study_runs(experiment_id))} "
           "(the runs table); the registered students: " + ", ".join(
               ui_links.markdown(name, ui_links.registered_model(name))
               for name in (registered_name(s, preset) for s in params["students"].split(","))) + ".", "",
           "### Table 1: student accuracy by teacher (%)", "", table, *reproduction, "",
           f"### Steps: {len(log)}, " + (f"reused {reused} of {len(log)}" if reused else "none reused"), "",
           "| step | run | |", "|---|---|---|"]
    for s in log:
        what = "reused (an earlier run)" if s["reused"] else f"ran, {s['seconds']:.0f}s"
        out.append(f"| {s['step']} | {run_link(s['run_id'][:8], experiment_id, s['run_id'])} | {what} |")
    return "\n".join(out)


def record(main: Main, log: list[dict], seconds: float, failed: list[dict] | None = None,
           skipped: list[dict] | None = None) -> None:
    """Metrics and steps.json of the main run (with the failed and skipped steps of a grid that stopped)."""
    import mlflow

    metrics = {"steps": len(log), "steps_reused": sum(s["reused"] for s in log), "main_seconds": seconds}
    content = {"steps": log}
    if failed is not None:
        metrics |= {"steps_failed": len(failed), "steps_skipped": len(skipped or [])}
        content |= {"failed": failed, "skipped": skipped or []}
    mlflow.log_metrics(metrics)
    mlflow.log_dict(content, "steps.json")


def describe(main: Main, preset_name: str, log: list[dict], report_run: str) -> None:
    """The main run's name (with how much was reused), its report tag and its description."""
    import mlflow

    reused = sum(s["reused"] for s in log)
    mlflow.set_tag(lineage.REPORT_RUN_ID, report_run)
    name = f"main-{preset_name}" + (f" (reused {reused} of {len(log)} steps)" if reused else "")
    mlflow.set_tags({"mlflow.runName": name, "mlflow.note.content": main_note(
        preset_name, main.params, log, report_run, main.experiment_id)})


def note_cli_run() -> None:
    """Remember `mlflow run`'s run (MLFLOW_RUN_ID) before the preset's experiment may take it away."""
    global CLI_RUN_ID
    CLI_RUN_ID = os.environ.get("MLFLOW_RUN_ID") or None
