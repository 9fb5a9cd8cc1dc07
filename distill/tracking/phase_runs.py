"""A phase's MLflow run: started, or a finished one reused (phase_run), and what it logs and reads.

A phase run is reused when a FINISHED run in the same experiment has the same cache key
(distill.tracking.cache_keys); who holds a key is decided in distill.tracking.key_locks, the tags a run carries and the
searches by them are distill.tracking.lineage, the store and experiment distill.tracking.store.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill import DistillError
from distill.config.params_text import IGNORE_CODE, reuse_mode
from distill.tracking import artifacts_present, cache_keys, key_locks, lineage, store
from distill.tracking.redact import redact_uri

console = logging.getLogger(__name__)

# Set by `main` (and in its step processes): the main run that phase runs nest under when none is
# active in this process, and the parent's reuse probe.
PARENT_RUN_ID: str | None = None
REUSE_ONLY = False
# Set by planner.finished_run (a plan printed before anything runs): a FINISHED run found is only named;
# no pointer run, no tag on any run.
LOOK_ONLY = False
# Set by `main` for a step fed a run it made moments ago: no earlier run can carry this cache key, so the
# lookups before the claim are skipped. The check after the claim still finds a concurrent try.
FRESH_INPUTS = False


class NotReused(Exception):
    """Raised by phase_run under REUSE_ONLY where the work would have to be done."""


@dataclass
class PhaseRun:
    """What phase_run did: the run that holds the phase's result, whether it was an earlier one, its key."""

    run_id: str
    reused: bool
    key: str


_listeners: list[Callable[[PhaseRun], None]] = []


@contextmanager
def on_phase_run(callback: Callable[[PhaseRun], None]) -> Iterator[None]:
    """Within the block, `callback(PhaseRun)` for every phase run started or reused in this process, as
    it happens (and for those a step process reports: notify_phase_run). `main` learns from it whether a
    step was reused, and which run a failed step had started."""
    _listeners.append(callback)
    try:
        yield
    finally:
        _listeners.remove(callback)


def notify_phase_run(pr: PhaseRun) -> PhaseRun:
    """Tell every listener of this process about a phase run (one of its own, or a step process's)."""
    for callback in list(_listeners):
        callback(pr)
    return pr


def _run_name(phase: str, tags: dict[str, str]) -> str:
    """`sft-7B-qwen2.5-0.5b-seed42`: a grid cell's runs named by teacher, student and seed (as an evaluation's
    `evaluate-student-qwen2.5-0.5b-7B-seed42`), so that two seeds' runs differ in the runs table."""
    parts = [phase] + [tags[t] for t in (lineage.TEACHER, lineage.STUDENT) if tags.get(t)]
    return "-".join(parts + ([f"seed{tags[lineage.SEED]}"] if tags.get(lineage.SEED) else []))


@contextmanager
def phase_run(phase: str, params: dict[str, Any], upstream: dict[str, str] | None = None,
              tags: dict[str, str] | None = None, reuse: bool = True, run_name: str | None = None,
              key: dict[str, Any] | None = None) -> Iterator[PhaseRun]:
    """Start (or reuse) the run of one phase.

    `params` are logged; `key` is what decides the result (the phase's `key_payload`: its keyed parameters as
    resolved, distill.config.params), `params` where not given. Yields PhaseRun; when `reused` is True the body must
    not do the work again. Under `mlflow run` the run that the CLI made is used; inside `main` it is nested.
    """
    import mlflow

    store.ensure_tracking_reachable()
    mode = reuse_mode(reuse)
    upstream = {k: v for k, v in (upstream or {}).items() if v}
    tags = {k: str(v) for k, v in (tags or {}).items() if v not in (None, "")}
    payload = params if key is None else key
    preset, backend = cache_keys.code_scope(payload)
    key = cache_keys.cache_key(phase, payload, upstream)
    work = cache_keys.work_key(phase, payload, upstream)
    files = cache_keys.code_files(phase, preset, backend)
    look = mode and not FRESH_INPUTS
    if look and LOOK_ONLY:  # a plan: what is finished now, without waiting for a live try of the same work
        prior = key_locks.find_reusable(key)
    else:
        prior = key_locks.wait_for_holders(phase, key) if look else None
    lost = None
    while prior and not artifacts_present.still_whole(phase, prior, look_only=LOOK_ONLY):  # set aside: look again
        prior, lost = (None if LOOK_ONLY else key_locks.wait_for_holders(phase, key)), prior
    stale = key_locks.find_same_work(work, files) if look and not prior else None
    if stale and LOOK_ONLY and stale[0] == lost:  # a plan sets nothing aside: the same run, found by its work
        stale = None
    ignored = None
    if stale and mode == IGNORE_CODE:
        prior, ignored = stale
    active = mlflow.active_run() is not None
    nested = active or PARENT_RUN_ID is not None
    if prior and LOOK_ONLY:
        yield PhaseRun(prior, True, key)
        return
    if prior:
        if ignored is None:
            console.info(f"{phase}: reusing FINISHED run {prior} (same parameters, inputs and code)")
        else:
            console.warning(f"{phase}: reusing FINISHED run {prior} although the code changed since "
                            f"({', '.join(ignored)}): reuse={IGNORE_CODE}")
        note = {f"{lineage.REUSED_IGNORING_CODE}.{prior}": f"{phase}: {', '.join(ignored)}"[:5000]} if ignored else {}
        if note and nested:  # the run that reused it: `main`
            if active:
                mlflow.set_tags(note)
            else:
                from mlflow.tracking import MlflowClient

                for k, v in note.items():
                    MlflowClient().set_tag(PARENT_RUN_ID, k, v)
        elif (os.environ.get("MLFLOW_RUN_ID") or note) and not nested:
            # `mlflow run` already made a run (or the acceptance must be on record): leave a pointer,
            # without the phase tag, so that searches by phase find only the real run.
            with mlflow.start_run():
                mlflow.set_tags({lineage.REUSED_RUN_ID: prior, lineage.REUSED_PHASE: phase, **note})
        yield notify_phase_run(PhaseRun(prior, True, key))
        return
    if REUSE_ONLY:
        raise NotReused(phase)
    claimed = f"{time.time():.3f}"
    all_tags = {lineage.PHASE: phase, lineage.CACHE_KEY: key, lineage.WORK_KEY: work,
                lineage.CODE_VERSION: cache_keys.code_version(phase, preset, backend),
                lineage.CODE_FILES: json.dumps(files, separators=(",", ":")),
                lineage.CLAIMED_AT: claimed, lineage.HEARTBEAT: claimed, **key_locks.whereabouts(),
                **tags, **{lineage.upstream_tag(k): v for k, v in upstream.items()}}
    if cache_keys.REHEARSAL:
        all_tags[lineage.REHEARSAL] = "true"
    if stale:
        console.warning(f"{phase}: FINISHED run {stale[0]} did the same work with other code (changed: "
                        f"{', '.join(stale[1])}); running again. reuse={IGNORE_CODE} would accept it")
        all_tags[lineage.CODE_CHANGED] = f"{stale[0]}: {', '.join(stale[1])}"[:5000]
    parent = PARENT_RUN_ID if not active else None
    with mlflow.start_run(run_name=run_name or _run_name(phase, tags), nested=nested, parent_run_id=parent,
                          tags=all_tags) as run, \
            key_locks.Heartbeat(run.info.run_id):
        tries = None
        if mode:  # another try claimed the same work at the same moment: the earlier claim does it
            time.sleep(key_locks.claim_wait_time(time.time() - float(claimed)))
            tries = []
            prior = key_locks.wait_for_holders(phase, key, me=(float(claimed), run.info.run_id), seen=tries)
            if prior and artifacts_present.still_whole(phase, prior):
                _become_pointer(run.info.run_id, prior, phase)
                yield notify_phase_run(PhaseRun(prior, True, key))
                return
        key_locks.mark_dead(key, run.info.run_id, tries)
        log_params_merged(run, params)
        yield notify_phase_run(PhaseRun(run.info.run_id, False, key))


def _become_pointer(run_id: str, prior: str, phase: str) -> None:
    """A try that lost the claim to a run that then finished: a pointer to it, out of phase searches."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for tag in (lineage.PHASE, lineage.CACHE_KEY, lineage.WORK_KEY, lineage.CODE_FILES, lineage.CLAIMED_AT,
                lineage.HEARTBEAT):
        client.delete_tag(run_id, tag)
    client.set_tag(run_id, lineage.REUSED_RUN_ID, prior)
    client.set_tag(run_id, lineage.REUSED_PHASE, phase)
    console.info(f"{phase}: reusing FINISHED run {prior} (it claimed the same work first)")


def _same_value(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return a.lower() == b.lower()


def earlier_tries(pr: PhaseRun, tag: bool = True) -> list[str]:
    """Ids of earlier unfinished tries of this run's work (their finished items carry over);
    tagged on the run as `distill.resumed_from` when there are any."""
    import mlflow

    ids = [r.info.run_id for r in key_locks.find_unfinished(pr.key) if r.info.run_id != pr.run_id]
    if ids and tag:
        mlflow.set_tag(lineage.RESUMED_FROM, ",".join(ids))
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

    from distill.data.jsonl import write_jsonl

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
        raise DistillError(f"run {run_id} has no artifact {path!r} ({type(e).__name__}): its files are gone or were "
                           "never written; name another run, or name none to have it found or made again") from None


def get_run(run_id: str):
    import mlflow

    try:
        return mlflow.get_run(run_id)
    except Exception:
        raise DistillError(f"no MLflow run with id {run_id!r} in {redact_uri(mlflow.get_tracking_uri())}") from None


def require_phase(run, phase: str) -> None:
    lost = run.data.tags.get(artifacts_present.ARTIFACTS_MISSING)
    if lost:  # set aside (artifacts_present): its phase tag was moved away
        raise DistillError(f"{run.data.tags.get(artifacts_present.LOST_TAGS[lineage.PHASE], 'that')} run "
                           f"{run.info.run_id} was set aside: {lost}; run `{phase}` again or name another run")
    actual = run.data.tags.get(lineage.PHASE)
    if actual != phase:
        raise DistillError(f"run {run.info.run_id} is a {actual or 'non-distill'} run, not a {phase} run")


def require_run(run_id: str | None, phase: str, what: str, **search):
    """The run the user named, or else the newest fitting one; a clear error when there is none."""
    if run_id:
        run = get_run(run_id)
        require_phase(run, phase)
        if run.info.status != "FINISHED":
            raise DistillError(f"{phase} run {run_id} is {run.info.status}, not FINISHED; finish it first")
        return run
    run = lineage.newest_finished(phase, **search)
    if run is None:
        raise DistillError(f"no FINISHED {phase} run found in this experiment for {what}; run `{phase}` first "
                           f"or name one")
    return run


def read_text_artifact(run_id: str, path: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return download_artifact(run_id, path, tmp).read_text(encoding="utf-8")


def read_jsonl_artifact(run_id: str, path: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        from distill.data.jsonl import read_jsonl

        return read_jsonl(download_artifact(run_id, path, tmp))
