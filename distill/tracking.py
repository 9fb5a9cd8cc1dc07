"""MLflow plumbing shared by every phase: reuse of finished runs, lineage tags, dataset inputs, tables.

A phase run is reused when a FINISHED run in the same experiment has the same cache key: the
hash of its entry point, its parameters, the run ids it consumed and the code version.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from distill import DistillError

TAG_PHASE = "distill.phase"
TAG_KEY = "distill.cache_key"
TAG_CODE = "distill.code_version"
TAG_REUSED = "distill.reused_run_id"
TAG_RESUMED = "distill.resumed_from"
PACKAGE_DIR = Path(__file__).parent


def _distill_imports(module: str) -> set[str]:
    """The distill modules a module imports, anywhere in its body (lazy imports included)."""
    import ast

    path = PACKAGE_DIR / (module.removeprefix("distill").lstrip(".").replace(".", "/") or "__init__")
    file = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
    if not file.is_file():
        return set()
    found = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distill"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from distill import tracking`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("distill"))
    return found


@lru_cache(maxsize=None)
def code_version(phase: str | None = None) -> str:
    """Hash of the code that decides a phase's results: its module and every distill module it
    imports (transitively), plus presets and shipped data. Editing the report does not
    invalidate finished teacher runs; editing the scoring code does."""
    files = {p for p in PACKAGE_DIR.rglob("*") if p.is_file() and p.suffix in {".yaml", ".json", ".tsv", ".jsonl"}}
    if phase is None:
        files |= set(PACKAGE_DIR.rglob("*.py"))
    else:
        seen, todo = set(), [f"distill.{phase}", "distill"]
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            todo.extend(_distill_imports(module))
        for module in seen:
            path = PACKAGE_DIR / module.removeprefix("distill").lstrip(".").replace(".", "/")
            for candidate in (path.with_suffix(".py"), path / "__init__.py"):
                if candidate.is_file():
                    files.add(candidate)
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(str(path.relative_to(PACKAGE_DIR)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def cache_key(phase: str, params: dict[str, Any], upstream: dict[str, str] | None = None) -> str:
    payload = {"phase": phase, "params": {k: str(v) for k, v in sorted(params.items())},
               "upstream": dict(sorted((upstream or {}).items())), "code": code_version(phase)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def ensure_tracking_reachable() -> None:
    """A down tracking server otherwise costs minutes of retries and a deep traceback."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=5)
    except requests.RequestException as e:
        raise DistillError(
            f"cannot reach the MLflow tracking server at {uri} ({type(e).__name__}); "
            "start it (mlflow server ...) or unset MLFLOW_TRACKING_URI to use ./mlflow.db"
        ) from None


def _escape(value: str) -> str:
    return value.replace("'", "\\'")


def search_phase_runs(phase: str | None = None, status: str | None = None, extra: str = "",
                      experiment_ids: list[str] | None = None, max_results: int = 5000) -> list:
    """Runs of a phase in the active experiment (stubs that only point at a reused run excluded)."""
    from mlflow.tracking import MlflowClient

    filters = []
    if phase:
        filters.append(f"tags.`{TAG_PHASE}` = '{_escape(phase)}'")
    if status:
        filters.append(f"attributes.status = '{status}'")
    if extra:
        filters.append(extra)
    if experiment_ids is None:
        experiment_ids = [_active_experiment_id()]
    return MlflowClient().search_runs(experiment_ids, " and ".join(filters), max_results=max_results,
                                      order_by=["attributes.start_time DESC"])


def _active_experiment_id() -> str:
    import mlflow

    run = mlflow.active_run()
    if run:
        return run.info.experiment_id
    env_run = os.environ.get("MLFLOW_RUN_ID")
    if env_run:
        return mlflow.get_run(env_run).info.experiment_id
    return mlflow.tracking.fluent._get_experiment_id()


TAG_INCOMPLETE = "distill.incomplete"


def _complete(run) -> bool:
    return run.info.status == "FINISHED" and run.data.tags.get(TAG_INCOMPLETE) != "true"


def find_reusable(key: str) -> str | None:
    """A FINISHED run of the same work that left nothing undone (see TAG_INCOMPLETE)."""
    runs = search_phase_runs(status="FINISHED", extra=f"tags.`{TAG_KEY}` = '{key}'", max_results=20)
    return next((r.info.run_id for r in runs if _complete(r)), None)


def find_unfinished(key: str) -> list:
    """Earlier tries of the same work that did not finish (killed, failed, still marked running, or
    finished with some items left undone), whose finished items a new try takes over."""
    runs = search_phase_runs(extra=f"tags.`{TAG_KEY}` = '{key}'")
    return [r for r in runs if not _complete(r)]


@dataclass
class PhaseRun:
    run_id: str
    reused: bool
    key: str


# Every phase run started or reused in this process, in order: `main` reports from it.
EVENTS: list[PhaseRun] = []


def _run_name(phase: str, tags: dict[str, str]) -> str:
    parts = [phase] + [tags[t] for t in ("distill.teacher", "distill.student") if tags.get(t)]
    return "-".join(parts)


@contextmanager
def phase_run(phase: str, params: dict[str, Any], upstream: dict[str, str] | None = None,
              tags: dict[str, str] | None = None, reuse: bool = True) -> Iterator[PhaseRun]:
    """Start (or reuse) the run of one phase.

    Yields PhaseRun; when `reused` is True the body must not do the work again. Under
    `mlflow run` the run that the CLI made is used; inside `main` the run is nested.
    """
    import mlflow

    ensure_tracking_reachable()
    upstream = {k: v for k, v in (upstream or {}).items() if v}
    tags = {k: str(v) for k, v in (tags or {}).items() if v not in (None, "")}
    key = cache_key(phase, params, upstream)
    prior = find_reusable(key) if reuse else None
    nested = mlflow.active_run() is not None
    if prior:
        print(f"[distill] {phase}: reusing FINISHED run {prior} (same parameters, inputs and code)", file=sys.stderr)
        if os.environ.get("MLFLOW_RUN_ID") and not nested:
            # `mlflow run` already made a run: leave a pointer, without the phase tag, so that
            # searches by phase find only the real run.
            with mlflow.start_run():
                mlflow.set_tags({TAG_REUSED: prior, "distill.reused_phase": phase})
        EVENTS.append(PhaseRun(prior, True, key))
        yield EVENTS[-1]
        return
    all_tags = {TAG_PHASE: phase, TAG_KEY: key, TAG_CODE: code_version(phase), **tags,
                **{f"distill.{k}" if not k.startswith("distill.") else k: v for k, v in upstream.items()}}
    parent = None if nested else os.environ.get("DISTILL_PARENT_RUN_ID") or None  # a Ray task of `main`
    with mlflow.start_run(run_name=_run_name(phase, tags), nested=nested, parent_run_id=parent, tags=all_tags) as run:
        log_params_merged(run, params)
        EVENTS.append(PhaseRun(run.info.run_id, False, key))
        yield EVENTS[-1]


def _same_value(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return a.lower() == b.lower()


def earlier_tries(pr: "PhaseRun", tag: bool = True) -> list[str]:
    """Ids of earlier unfinished tries of this run's work (their finished items carry over);
    tagged on the run as `distill.resumed_from` when there are any."""
    import mlflow

    ids = [r.info.run_id for r in find_unfinished(pr.key) if r.info.run_id != pr.run_id]
    if ids and tag:
        mlflow.set_tag(TAG_RESUMED, ",".join(ids))
    return ids


def log_params_merged(run, params: dict[str, Any]) -> None:
    """Log resolved parameters beside those `mlflow run` already logged as the user typed them.

    MLflow forbids changing a logged value; a value typed differently but equal (`1e-5`) is kept,
    and the resolved one, if different, goes to `<key>.resolved`.
    """
    import mlflow

    existing = mlflow.get_run(run.info.run_id).data.params
    out = {}
    for k, v in params.items():
        text = "" if v is None else str(v)
        if k not in existing:
            out[k] = text
        elif not _same_value(existing[k], text):
            out[f"{k}.resolved"] = text
    if out:
        mlflow.log_params(out)


def log_jsonl(records: list[dict], filename: str, artifact_path: str | None = None) -> None:
    import mlflow

    from distill.data import write_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        write_jsonl(path, records)
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_records(records: list[dict], name: str) -> None:
    """Per-example results as an MLflow table (UI) and a JSONL artifact (scripts)."""
    import mlflow
    import pandas as pd

    log_jsonl(records, f"{name}.jsonl")
    if records:
        mlflow.log_table(data=pd.DataFrame.from_records(records), artifact_file=f"{name}.json")


def log_dataset(records: list[dict], name: str, source: str, context: str):
    """A dataset input with a digest, so the UI shows which data a run used; returns the digest."""
    import mlflow
    import pandas as pd

    df = pd.DataFrame.from_records(records)
    with warnings.catch_warnings():  # a local path matches two equivalent source types; either is right
        warnings.simplefilter("ignore", UserWarning)
        if source.startswith("hf://datasets/"):
            from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

            source = HuggingFaceDatasetSource(path=source.removeprefix("hf://datasets/"))
        if isinstance(source, str) and source.startswith("runs:/"):
            from mlflow.tracking.artifact_utils import get_artifact_uri

            run_id, _, path = source.removeprefix("runs:/").partition("/")
            source = get_artifact_uri(run_id, path)  # the run's artifact store: a path or mlflow-artifacts:/
        try:
            dataset = mlflow.data.from_pandas(df, source=source, name=name)
        except mlflow.exceptions.MlflowException:  # a store MLflow has no source type for
            from mlflow.data.http_dataset_source import HTTPDatasetSource

            dataset = mlflow.data.from_pandas(df, source=HTTPDatasetSource(str(source)), name=name)
    mlflow.log_input(dataset, context=context)
    return dataset.digest


def download_artifact(run_id: str, path: str, dst: str | None = None) -> Path:
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dst))
    except Exception as e:
        raise DistillError(f"run {run_id} has no artifact {path!r} ({type(e).__name__})") from None


def get_run(run_id: str):
    import mlflow

    try:
        return mlflow.get_run(run_id)
    except Exception:
        raise DistillError(f"no MLflow run with id {run_id!r} in {mlflow.get_tracking_uri()}") from None


def require_phase(run, phase: str) -> None:
    actual = run.data.tags.get(TAG_PHASE)
    if actual != phase:
        raise DistillError(f"run {run.info.run_id} is a {actual or 'non-distill'} run, not a {phase} run")


def latest_finished(phase: str, tags: dict[str, str] | None = None, params: dict[str, str] | None = None):
    """The newest FINISHED run of a phase with these tags and params, or None."""
    extra = [f"tags.`{k}` = '{_escape(v)}'" for k, v in (tags or {}).items()]
    extra += [f"params.`{k}` = '{_escape(v)}'" for k, v in (params or {}).items()]
    runs = search_phase_runs(phase, status="FINISHED", extra=" and ".join(extra), max_results=1)
    return runs[0] if runs else None


def require_run(run_id: str | None, phase: str, what: str, **search):
    """The run the user named, or else the newest fitting one; a clear error when there is none."""
    if run_id:
        run = get_run(run_id)
        require_phase(run, phase)
        if run.info.status != "FINISHED":
            raise DistillError(f"{phase} run {run_id} is {run.info.status}, not FINISHED; finish it first")
        return run
    run = latest_finished(phase, **search)
    if run is None:
        raise DistillError(f"no FINISHED {phase} run found in this experiment for {what}; run `{phase}` first "
                           f"or name one")
    return run


def read_jsonl_artifact(run_id: str, path: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        from distill.data import read_jsonl

        return read_jsonl(download_artifact(run_id, path, tmp))
