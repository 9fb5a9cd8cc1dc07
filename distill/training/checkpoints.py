"""Training checkpoints: where they are written, uploaded to the run, found for a resume, and removed.

A checkpoint of full-parameter SFT is fp32 weights plus AdamW's two moments, ~12 bytes a parameter
(22 GB for a 1.8B student). Each one is uploaded to the run (`checkpoints/checkpoint-<step>`, its
UPLOAD_COMPLETE marker last) so that a rerun on another machine resumes from it. With
`keep_checkpoints=last` the run keeps only its newest complete one: the older ones (and those of the
earlier, killed tries it resumed from) are removed once a newer upload has finished, and the last one
once the run has logged its model. `all` keeps every checkpoint of every try.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from distill import DistillError
from distill.config.environment import distill_home

console = logging.getLogger(__name__)

KEEP = ("last", "all")
FOLDER = "checkpoints"
# Uploaded last into each checkpoint folder of a run: a folder without it is a partial upload (the process
# was killed during it) and is never resumed from.
UPLOAD_COMPLETE = "distill-upload-complete"


def check_keep(value: str) -> str:
    if value not in KEEP:
        raise DistillError(f"keep_checkpoints must be one of {', '.join(KEEP)} (got {value!r}): last keeps only the "
                           "newest complete checkpoint while the run trains, all keeps every one")
    return value


def checkpoint_root() -> Path:
    return distill_home() / "checkpoints"


def step_of(name: str) -> int:
    return int(name.rsplit("-", 1)[-1])


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest local checkpoint the Trainer finished writing (trainer_state.json is its last file)."""
    found = [d for d in folder.glob("checkpoint-*") if (d / "trainer_state.json").is_file()]
    return max(found, key=lambda d: step_of(d.name)) if found else None


def uploaded(run_id: str) -> list[str]:
    """The run's checkpoint folders (`checkpoints/checkpoint-<step>`), newest first, complete or not."""
    import mlflow

    try:
        names = [a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path=FOLDER) if a.is_dir]
    except Exception:
        return []
    return sorted(names, key=step_of, reverse=True)


def is_complete(run_id: str, name: str) -> bool:
    import mlflow

    files = {a.path.rsplit("/", 1)[-1] for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path=name)}
    return UPLOAD_COMPLETE in files


def checkpoint_from_runs(run_ids: list[str], dst: Path) -> Path | None:
    """The newest checkpoint an earlier unfinished try uploaded completely, downloaded into dst."""
    import mlflow

    for run_id in run_ids:
        for name in uploaded(run_id):
            if is_complete(run_id, name):
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(dst))
                return Path(local)
    return None


def resume_point(out_dir: Path, earlier: list[str]) -> Path | None:
    """Where training continues from: the newest local checkpoint, else the newest complete upload of an
    earlier try; None for a fresh start, after removing what a finished run of the same work left."""
    if earlier:
        return latest_checkpoint(out_dir) or checkpoint_from_runs(earlier, out_dir / "from-run")
    if out_dir.exists():
        shutil.rmtree(out_dir)  # left by a finished run of the same work (reuse=false): start clean
    return None


def upload(folder: Path, step: int) -> str:
    """Every file of a local checkpoint into the active run, then the marker that says the upload finished."""
    import mlflow

    where = f"{FOLDER}/checkpoint-{step}"
    mlflow.log_artifacts(str(folder), artifact_path=where)
    mlflow.log_text("every file of this checkpoint was uploaded\n", f"{where}/{UPLOAD_COMPLETE}")
    return where


def remove(run_id: str, names: list[str] | None = None) -> list[str]:
    """Delete checkpoint folders of a run (all of them when names is None) through the run's own artifact
    repository (a local folder, or the server's proxied store: `mlflow-artifacts:` deletes over HTTP);
    returns those still there afterwards (a store that cannot delete: MLflow's base repository ignores it)."""
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    targets = uploaded(run_id) if names is None else names
    if not targets:
        return []
    repo = get_artifact_repository(mlflow.get_run(run_id).info.artifact_uri)
    for name in targets:
        try:
            repo.delete_artifacts(name)
        except Exception as e:  # the upload and the run stay good; only disk is not freed
            console.warning(f"could not remove {name} of run {run_id} ({type(e).__name__}: {e})")
    left = set(uploaded(run_id))
    kept = [n for n in targets if n in left]
    if kept:
        console.warning(f"the artifact store kept {', '.join(kept)} of run {run_id} (it does not delete); "
                        "remove them by hand to free the space")
    return kept


def keep_newest(run_id: str, newest: str, earlier: list[str]) -> None:
    """After `newest` finished uploading: every other checkpoint of this run and of the earlier tries it
    continues goes (they are older: a rerun resumes from `newest`)."""
    remove(run_id, [n for n in uploaded(run_id) if n != newest])
    for other in earlier:
        remove(other)
