"""Reuse checks what it reuses: a FINISHED run whose files are gone is set aside, and its work done again.

A run's artifacts can be lost under the store (a cleaned folder, an expired bucket): a run that still says
FINISHED would otherwise be reused forever while every consumer fails on it. The check asks the store's own
listing (MlflowClient.list_artifacts, list_logged_model_artifacts), so a remote server is asked the same way
and nothing is downloaded: a listing or two per reused run.
"""

from __future__ import annotations

import logging

from distill.tracking import lineage

console = logging.getLogger(__name__)

# What the consumers of each phase read from its run (distill/phases/*: read_jsonl_artifact and friends).
READ_BY_CONSUMERS = {
    "translate": ("translations.jsonl",),
    "teacher": ("answers.jsonl",),
    "select": ("dev.jsonl",),           # and train/<teacher>.jsonl of every teacher it has (lineage.teachers_of)
    "evaluate": ("predictions.jsonl",),
    "errors": ("judgments.jsonl",),
    "tokens": ("token_counts.jsonl",),
    "report": ("tables/table1.md",),
}
# A logged transformers model without these cannot load (its weights are under model/).
MODEL_FILES = ("MLmodel", "model")
# On a run set aside: what it lost. Its phase and cache key move to LOST_TAGS, so that no search by phase or key
# (reuse, `sft` looking for a selection, `main` adopting a user's runs) finds it again.
ARTIFACTS_MISSING = "distill.artifacts_missing"
LOST_TAGS = {lineage.PHASE: "distill.lost_phase", lineage.CACHE_KEY: "distill.lost_cache_key",
             lineage.WORK_KEY: "distill.lost_work_key"}
REDO = {"sft": "training again", "teacher": "generating again", "translate": "translating again"}


def _listed(client, run_id: str, folder: str) -> set[str]:
    return {f.path for f in client.list_artifacts(run_id, folder or None)}


def missing_files(run) -> str:
    """What `run` lacks of what its consumers read, in a few words; "" when it is whole (or cannot be told)."""
    from mlflow.tracking import MlflowClient

    phase, tags = run.data.tags.get(lineage.PHASE, ""), run.data.tags
    client = MlflowClient()
    try:
        if phase == "sft":
            return _missing_model(client, tags)
        needed = list(READ_BY_CONSUMERS.get(phase, ()))
        if phase == "select":
            needed += [f"train/{t}.jsonl" for t in lineage.teachers_of(run)]
        if not needed:
            return ""
        listings: dict[str, set[str]] = {}
        lost = []
        for path in needed:
            folder = path.rpartition("/")[0]
            if folder not in listings:
                listings[folder] = _listed(client, run.info.run_id, folder)
            if path not in listings[folder]:
                lost.append(path)
    except Exception as e:  # noqa: BLE001 - a store that cannot say (an outage): reuse, as before the check
        console.debug(f"could not list the artifacts of run {run.info.run_id}: {e}")
        return ""
    return f"its artifacts {', '.join(lost)} are gone" if lost else ""


def _missing_model(client, tags: dict[str, str]) -> str:
    model_id = tags.get(lineage.MODEL_ID)
    if not model_id:
        return ""  # a run from before logged models carried their id: nothing to check it by
    names = {f.path for f in client.list_logged_model_artifacts(model_id)}
    lost = [f for f in MODEL_FILES if f not in names]
    return f"its model files are gone (logged model {model_id} lacks {', '.join(lost)})" if lost else ""


def set_aside(run, phase: str, what: str) -> None:
    """Take a run that lost its files out of reuse for good: its phase and keys move to LOST_TAGS, the loss is
    tagged, and an alias that points at a version registered from it is removed (the redo's version takes it)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run_id = run.info.run_id
    client.set_tag(run_id, ARTIFACTS_MISSING, what[:5000])
    for tag, lost in LOST_TAGS.items():
        if tag in run.data.tags:
            client.set_tag(run_id, lost, run.data.tags[tag])
            client.delete_tag(run_id, tag)
    if phase == "sft":
        _drop_aliases(client, run_id, what)


def _drop_aliases(client, run_id: str, what: str) -> None:
    try:
        versions = client.search_model_versions(f"run_id = '{run_id}'")
    except Exception:  # noqa: BLE001 - a store without a registry, or nothing registered
        return
    for v in versions:
        client.set_model_version_tag(v.name, v.version, "files_missing", what[:5000])
        for alias in client.get_model_version(v.name, v.version).aliases or []:  # a search leaves aliases out
            client.delete_registered_model_alias(v.name, alias)
            console.warning(f"removed alias @{alias} from {v.name} version {v.version} (run {run_id}: {what})")


def still_whole(phase: str, run, look_only: bool = False) -> bool:
    """Whether the FINISHED run (an id or the run) can be reused: it has what its consumers read. One that lost it
    is set aside (not under `look_only`: a plan changes nothing) with a console line that says why it is redone."""
    from mlflow.tracking import MlflowClient

    run_id = run if isinstance(run, str) else run.info.run_id
    run = MlflowClient().get_run(run_id) if isinstance(run, str) else run
    what = missing_files(run)
    if not what:
        return True
    console.warning(f"{phase} run {run_id} is not reused: {what}; {REDO.get(phase, 'running it again')}")
    if not look_only:
        set_aside(run, phase, what)
    return False
