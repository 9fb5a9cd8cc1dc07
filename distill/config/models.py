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
    """An MLflow transformers-flavour model: weights under model/, tokenizer under components/."""
    import mlflow

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as e:
        raise DistillError(f"cannot fetch model {uri} from {redact_uri(mlflow.get_tracking_uri())} "
                           f"({type(e).__name__}: {e})") from None
    weights = local / "model" if (local / "model" / "config.json").is_file() else local
    tok = local / "components" / "tokenizer"
    if not (weights / "config.json").is_file():
        raise DistillError(f"{uri} is not a transformers model (no config.json under {local})")
    return str(weights), str(tok if tok.is_dir() else weights)


def materialize(ref: ModelRef) -> LoadableModel:
    """Build tiny models, download MLflow models; Hub ids and folders pass through."""
    source = ref.source
    if RUN_ID_RE.match(source):
        source = f"runs:/{source}/model"
    if source.startswith("tiny:"):
        from distill.standins.tiny import tiny_model_dir

        path = str(tiny_model_dir(source))
        return LoadableModel(path, path, ref)
    if source.startswith(("runs:/", "models:/")):
        weights, tok = _from_mlflow(source)
        return LoadableModel(weights, tok, ref)
    return LoadableModel(source, source, ref)
