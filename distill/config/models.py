"""Models by name: a short name of the preset, a Hub id, a folder, a run or a registered version (ModelRef),
and what a backend or the trainer loads for it (materialize: a local folder or a Hub id)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from distill import DistillError
from distill.config.names import did_you_mean, match_name
from distill.config.preset import ModelEntry, Preset
from distill.tracking.redact import redact_uri

RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class ModelRef:
    """A model as the user named it and where it comes from.

    `source` is a Hub id, a local directory, `tiny:<name>`, `runs:/...`, `models:/...`, or the name a
    server knows (`gpt-4o-mini`, backend=openai only); `role` is `teacher`, `student`, `translator`,
    `served` for such a server-side name, or None for another model outside the preset.
    """

    name: str
    source: str
    role: str | None = None
    tensor_parallel_size: int = 1

    @property
    def is_mlflow(self) -> bool:
        return self.source.startswith(("runs:/", "models:/"))


def _role_table(preset: Preset, role: str) -> dict[str, ModelEntry]:
    return getattr(preset, f"{role}s")


def known_names(preset: Preset, roles: tuple[str, ...] = ("teacher", "student")) -> list[str]:
    names: list[str] = []
    for role in roles:
        names += list(_role_table(preset, role))
    return names


def resolve_model(name: str, preset: Preset, roles: tuple[str, ...] = ("teacher", "student"),
                  served: bool = False) -> ModelRef:
    """Short name -> preset entry; otherwise a local directory, an MLflow URI, or a Hub id.

    A short name matches in any case and width (`7b`, `７Ｂ` -> `7B`: distill/config/names.py) and comes back in the
    preset's spelling, which is what every tag, parameter, cache key and alias downstream uses.
    `served` (backend=openai): any other name is the model name the server knows (`gpt-4o-mini`)."""
    name = (name or "").strip()
    if not name:
        raise DistillError("no model given")
    default_tp = int(preset.tensor_parallel_size or 1)
    for role in roles:
        table = _role_table(preset, role)
        short = match_name(name, table)
        if short is not None:
            entry = table[short]
            return ModelRef(short, str(entry.model), role, int(entry.tensor_parallel_size or default_tp))
    if name.startswith(("runs:/", "models:/", "tiny:")):
        return ModelRef(name, name, None, default_tp)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise DistillError(f"model directory {name} has no config.json (not a transformers model folder)")
        return ModelRef(name, str(path.resolve()), None, default_tp)
    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1
    if looks_like_path:
        raise DistillError(f"model path not found: {name}")
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", name):
        return ModelRef(name, name, None, default_tp)  # a Hub id
    if served:
        return ModelRef(name, name, "served", default_tp)
    other = [r for r in ("teacher", "student") if r not in roles and match_name(name, _role_table(preset, r))]
    if other:
        wanted = " or ".join(f"a {r}" for r in roles)
        raise DistillError(f"{name!r} is a {other[0]} of preset {preset.name!r}, not {wanted}; "
                           f"known names: {', '.join(known_names(preset, roles))}")
    known = known_names(preset, roles)
    raise DistillError(
        f"unknown model name {name!r} in preset {preset.name!r}; {did_you_mean(name, known)}known names: "
        f"{', '.join(known)} (or give a Hub id like Qwen/Qwen2.5-0.5B, a local model folder, runs:/... or "
        "models:/..., or with backend=openai the name the server knows)"
    )


def resolve_role(name: str, preset: Preset, role: str, served: bool = False) -> ModelRef:
    """Like resolve_model, but an unknown short name lists only the names of this role."""
    return resolve_model(name, preset, roles=(role,), served=served)


def resolve_names(names: list[str], preset: Preset, role: str, what: str) -> list[str]:
    """A list of models of one role (`main`'s teachers or students) in the preset's spelling; the same model
    twice (`7B,7b`) is refused, not run twice under one name."""
    out: list[str] = []
    for given in names:
        name = resolve_role(given, preset, role).name
        if name in out:
            raise DistillError(f"{what} names {name} twice ({', '.join(repr(g) for g in names)})")
        out.append(name)
    return out


def preset_spelling(name: str, preset: Preset, role: str) -> str:
    """The preset's spelling of a short name of this role, else the name as given (a label: `sft` with
    train_file, where the teacher is only a name for the data)."""
    return match_name(name, _role_table(preset, role)) or name.strip()


@dataclass(frozen=True)
class LoadableModel:
    model: str          # local folder or Hub id
    tokenizer: str      # usually the same
    ref: ModelRef


def _from_mlflow(uri: str) -> tuple[str, str]:
    """An MLflow transformers-flavour model: weights under model/, tokenizer under components/. A local store's
    files are read where they are; a server's are downloaded once into distill_home()/models (_cached_download):
    a download to MLflow's default (a fresh temporary folder each time, never removed) left a whole copy of the
    student in $TMPDIR per evaluation."""
    import mlflow

    try:
        underlying, key = _artifact_location(uri)
        local = _local_folder(underlying) or _cached_download(underlying, key)
    except Exception as e:
        raise DistillError(f"cannot fetch model {uri} from {redact_uri(mlflow.get_tracking_uri())} "
                           f"({type(e).__name__}: {e})") from None
    weights = local / "model" if (local / "model" / "config.json").is_file() else local
    tok = local / "components" / "tokenizer"
    if not (weights / "config.json").is_file():
        raise DistillError(f"{uri} is not a transformers model (no config.json under {local})")
    return str(weights), str(tok if tok.is_dir() else weights)


def _artifact_location(uri: str) -> tuple[str, str]:
    """Where the artifacts of a `runs:/` or `models:/` URI are (a path, file://, mlflow-artifacts:/, s3://...) and a
    cache key for what it points to: run id and path, or the version an alias points to now (a moved alias is
    another key)."""
    if uri.startswith("runs:/"):
        return _run_location(uri)
    return _registered_location(uri)


def _run_location(uri: str) -> tuple[str, str]:
    """`runs:/<run>/<name>/...`: the run's logged model of that name (MLflow 3 keeps a model's files apart
    from its run's), else the run's own artifacts."""
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
    from mlflow.tracking import MlflowClient

    run_id, path = RunsArtifactRepository.parse_runs_uri(uri.rstrip("/"))
    path = path or ""
    run = MlflowClient().get_run(run_id)
    name, _, rest = path.partition("/")
    logged = _logged_model_location(run, name) if name else None
    if logged:
        return _joined(logged, rest), f"{run_id}/{path}"
    return _joined(run.info.artifact_uri, path), f"{run_id}/{path}"


def _logged_model_location(run, name: str) -> str | None:
    from mlflow.tracking import MlflowClient

    try:
        found = MlflowClient().search_logged_models(
            experiment_ids=[run.info.experiment_id], max_results=1,
            filter_string=f"name = '{name}' AND source_run_id = '{run.info.run_id}'")
    except Exception:  # noqa: BLE001 - a store without logged models (before MLflow 3): the run's artifacts
        return None
    return found[0].artifact_location if found else None


def _registered_location(uri: str) -> tuple[str, str]:
    """`models:/<name>/<version>`, `models:/<name>@<alias>` (resolved to its version now), `models:/<model id>`."""
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.store.artifact.utils.models import get_model_name_and_version
    from mlflow.tracking import MlflowClient

    base, path = ModelsArtifactRepository.split_models_uri(uri)
    client = MlflowClient()
    found = get_model_name_and_version(client, base)
    if len(found) == 1:  # a logged model's id
        return _joined(client.get_logged_model(found[0]).artifact_location, path), f"{found[0]}/{path}"
    name, version = found
    return _joined(client.get_model_version_download_uri(name, version), path), f"{name}-v{version}/{path}"


def _joined(location: str, path: str) -> str:
    return f"{location.rstrip('/')}/{path}" if path else location


def _local_folder(location: str) -> Path | None:
    """The folder of a location on this machine's file system (a plain path or file://), else None."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(location)
    if parsed.scheme == "file":
        folder = Path(url2pathname(parsed.path))
    elif not parsed.scheme:
        folder = Path(location)
    else:
        return None
    return folder.resolve() if folder.is_dir() else None


def _cached_download(location: str, key: str) -> Path:
    """The artifacts at `location` in distill_home()/models/<key's folder>, downloaded the first time only. The
    download goes to a folder beside it, renamed into place when complete: a killed download is never taken for a
    model, and of two processes fetching one model at once the one that loses the rename uses the winner's copy."""
    import hashlib
    import shutil
    import tempfile

    import mlflow

    from distill.config.environment import distill_home

    root = distill_home() / "models"
    digest = hashlib.sha256(f"{key}\n{location}".encode()).hexdigest()[:12]
    readable = re.sub(r"[^\w.-]+", "_", key).strip("_")
    target = root / f"{readable}-{digest}"
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(root, target.name)
    part = Path(tempfile.mkdtemp(prefix=f".{target.name}.{_host_pid()}.", suffix=".part", dir=root))
    try:
        got = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(part)))
        try:
            got.rename(target)
        except OSError:
            if not target.is_dir():  # not another process's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return target


def _host_pid() -> str:
    import socket

    return f"{socket.gethostname()}-{os.getpid()}"


def _remove_abandoned(root: Path, name: str) -> None:
    """Partial downloads of `name` left by a process of this host that has ended (killed mid-download): each is
    up to a model's size. Another host's (a shared home) are left alone: whether it still runs is unknown here."""
    import shutil
    import socket

    host = socket.gethostname()
    for part in root.glob(f".{name}.{host}-*.part"):
        pid = part.name[len(f".{name}.{host}-"):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(part, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def materialize(ref: ModelRef) -> LoadableModel:
    """Build tiny models, find MLflow models (in place in a local store, else downloaded once); Hub ids and folders
    pass through."""
    source = ref.source
    if RUN_ID_RE.match(source):
        source = f"runs:/{source}/model"
    if source.startswith("tiny:"):
        from distill.local_models.tiny import tiny_model_dir

        path = str(tiny_model_dir(source))
        return LoadableModel(path, path, ref)
    if source.startswith(("runs:/", "models:/")):
        weights, tok = _from_mlflow(source)
        return LoadableModel(weights, tok, ref)
    return LoadableModel(source, source, ref)
