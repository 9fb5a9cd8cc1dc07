"""Every MLflow UI link the project writes, built here: hash routes of the installed MLflow's frontend (3.17), each
opening in its Model training mode.

MLflow's UI starts in its GenAI mode (an empty traces Overview) unless told otherwise; its frontend reads the mode
from the query of the hash route (`#/experiments/1/runs/<id>?workflowType=machine_learning`) before the choice it
keeps per browser, and keeps a link's mode only for that page. The runs table's columns and grouping come from a
shared view: an experiment tag `mlflow.sharedViewState.<key>` (the JSON MLflow's own Share button writes) that a
link names with `viewStateShareKey=<key>`.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote, urlencode

MODE = {"workflowType": "machine_learning"}  # MLflow's WorkflowType.MACHINE_LEARNING: "Model training"
# ExperimentKind.CUSTOM_MODEL_DEVELOPMENT, which MLflow's frontend derives from Model training mode ("Machine
# learning"); MLflow 3.17's UI takes the mode from the link or the browser, not from this tag.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
STUDY_VIEW = "distill-study"
STUDY_VIEW_TAG = f"mlflow.sharedViewState.{STUDY_VIEW}"
MLFLOW_UI_DEFAULT = "http://127.0.0.1:5000"  # what a plain `mlflow ui` serves


def _route(path: str, **query: str) -> str:
    """The mode last: MLflow's compare page reads its own parameters only from the start of the query."""
    return f"#{path}?{urlencode({**query, **MODE})}"


def run_page(experiment_id: str, run_id: str, artifact: str = "") -> str:
    """A run's page, or one of its artifacts opened in the UI's viewer."""
    return _route(f"/experiments/{experiment_id}/runs/{run_id}" + (f"/artifactPath/{artifact}" if artifact else ""))


def study_runs(experiment_id: str) -> str:
    """The experiment's runs table as the study: the student evaluations grouped by teacher (average accuracy per
    teacher), with teacher, student, seed, phase and accuracy columns (STUDY_VIEW_STATE)."""
    return _route(f"/experiments/{experiment_id}/runs", viewStateShareKey=STUDY_VIEW)


def compare_runs(experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's Compare page of these runs (parallel coordinates, scatter, contour over their params)."""
    return _route("/compare-runs", runs=json.dumps(run_ids, separators=(",", ":")),
                  experiments=json.dumps([experiment_id], separators=(",", ":")))


def registered_model(name: str) -> str:
    """A registered model's page: its versions and aliases. (MLflow's list of all models drops a link's query,
    so it opens in the browser's mode; a model's page keeps it.)"""
    return _route(f"/models/{quote(name, safe='')}")


def model_version(name: str, version: str | int) -> str:
    return _route(f"/models/{quote(name, safe='')}/versions/{version}")


def markdown(text: str, route: str) -> str:
    """A Markdown link the UI follows from whatever host serves it (a hash route, relative to the page)."""
    return f"[{text}]({route})"


def absolute(base_url: str, route: str) -> str:
    return f"{base_url.rstrip('/')}/{route}"


# The shared view's state: search facets and the runs table's UI state, as MLflow's Share button stores them.
STUDY_VIEW_STATE = {
    "searchFilter": "params.role = 'student'",
    "orderByKey": "params.`student`",
    "orderByAsc": True,
    "selectedColumns": ["params.`teacher`", "params.`student`", "params.`seed`", "tags.`distill.phase`",
                        "metrics.`accuracy`"],
    "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "param", "groupByData": "teacher"}]},
}


def label_experiment(client, experiment_id: str, created: bool) -> None:
    """The study's view on the experiment (when absent: a user's edit of it stays); its kind only on an experiment
    this project created (a user's own experiment keeps what it says it is)."""
    tags = client.get_experiment(experiment_id).tags
    if STUDY_VIEW_TAG not in tags:
        client.set_experiment_tag(experiment_id, STUDY_VIEW_TAG, json.dumps(STUDY_VIEW_STATE))
    if created and EXPERIMENT_KIND_TAG not in tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


def _absolute_store(uri: str) -> str:
    """A relative `sqlite:///mlflow.db` as an absolute one: the command works from any folder."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def where_to_look(tracking_uri: str, route: str) -> str:
    """One console line: the page to open, on the tracking server, or after the `mlflow ui` command that serves
    this store."""
    from distill.tracking.redact import redact_uri

    if tracking_uri.startswith(("http://", "https://")):
        return f"open in the MLflow UI: {absolute(redact_uri(tracking_uri), route)}"
    store = redact_uri(_absolute_store(tracking_uri))
    return f"to see it: mlflow ui --backend-store-uri {store}   then open {absolute(MLFLOW_UI_DEFAULT, route)}"
