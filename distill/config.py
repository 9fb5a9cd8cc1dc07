"""Presets (readable YAML files) and the resolution of short model names through them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from distill import DistillError

PRESET_DIR = Path(__file__).parent / "presets"
RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


# What the code reads from every preset without a default: (key, sub-keys).
REQUIRED = {"name": (), "backend": (), "translator": ("model",), "teachers": (), "students": (),
            "data": ("train", "eval_set")}


# name -> file of every preset loaded in this process: the reuse key covers the preset in use (tracking).
_PRESET_FILES: dict[str, str] = {}


@lru_cache(maxsize=None)
def _load_preset_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except UnicodeDecodeError as e:
        raise DistillError(f"preset file {path} is not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise DistillError(f"preset file {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise DistillError(f"preset file {path} is not a YAML mapping")
    check_preset_shape(data, path)
    return data


def check_preset_shape(data: dict[str, Any], path: str) -> None:
    """Every key the phases read without a default, and every number by the rules of distill/checks.py."""
    from distill.checks import check_preset

    for key, subkeys in REQUIRED.items():
        if data.get(key) in (None, "", {}):
            raise DistillError(f"preset file {path} has no '{key}' (see distill/presets/paper.yaml for the shape)")
        for sub in subkeys:
            if not isinstance(data[key], dict) or data[key].get(sub) in (None, ""):
                raise DistillError(f"preset file {path} has no '{key}.{sub}' (see distill/presets/paper.yaml)")
    for role in ("teachers", "students"):
        if not isinstance(data[role], dict):
            raise DistillError(f"preset file {path}: '{role}' must map short names to models")
        for short, entry in data[role].items():
            if isinstance(entry, dict) and not entry.get("model") or entry in (None, ""):
                raise DistillError(f"preset file {path}: {role}.{short} names no model")
    check_preset(data, path)


def _loaded(path: str) -> dict[str, Any]:
    data = _load_preset_file(path)
    _PRESET_FILES[str(data.get("name"))] = path
    return data


def preset_file(name: str) -> Path | None:
    """The file a preset of this name was loaded from in this process, else the shipped one."""
    if name in _PRESET_FILES:
        return Path(_PRESET_FILES[name])
    shipped = PRESET_DIR / f"{name}.yaml"
    return shipped if shipped.is_file() else None


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset by name (`paper`, `offline`) or by the path of a YAML file of the same shape."""
    candidate = Path(name_or_path).expanduser()
    if name_or_path.endswith((".yaml", ".yml")) or candidate.is_file():
        if not candidate.is_file():
            raise DistillError(f"preset file not found: {os.path.abspath(candidate)}")
        return _loaded(str(candidate.resolve()))
    path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise DistillError(
            f"unknown preset {name_or_path!r}; known presets: {', '.join(preset_names())} "
            "(or the path of a YAML file)"
        )
    return _loaded(str(path))


def distill_home() -> Path:
    """Where built tiny models and local checkpoints live ($DISTILL_HOME, else ~/.cache/distill)."""
    return Path(os.environ.get("DISTILL_HOME", Path.home() / ".cache" / "distill"))


def apply_offline_env(preset: dict[str, Any]) -> None:
    """Without a network every Hub lookup waits for a timeout; the offline preset never asks."""
    if preset.get("name") == "offline":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


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


def _role_table(preset: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    table = preset.get(f"{role}s") or {}
    return {str(k): (v if isinstance(v, dict) else {"model": v}) for k, v in table.items()}


def known_names(preset: dict[str, Any], roles: tuple[str, ...] = ("teacher", "student")) -> list[str]:
    names: list[str] = []
    for role in roles:
        names += list(_role_table(preset, role))
    return names


def resolve_model(name: str, preset: dict[str, Any], roles: tuple[str, ...] = ("teacher", "student"),
                  served: bool = False) -> ModelRef:
    """Short name -> preset entry; otherwise a local directory, an MLflow URI, or a Hub id.

    `served` (backend=openai): any other name is the model name the server knows (`gpt-4o-mini`)."""
    name = (name or "").strip()
    if not name:
        raise DistillError("no model given")
    default_tp = int(preset.get("tensor_parallel_size") or 1)
    for role in roles:
        for short, entry in _role_table(preset, role).items():
            if short.lower() == name.lower():
                return ModelRef(short, str(entry["model"]), role, int(entry.get("tensor_parallel_size") or default_tp))
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
    known = ", ".join(known_names(preset, roles))
    raise DistillError(
        f"unknown model name {name!r} in preset {preset.get('name')!r}; known names: {known} "
        "(or give a Hub id like Qwen/Qwen2.5-0.5B, a local model folder, runs:/... or models:/..., "
        "or with backend=openai the name the server knows)"
    )


def resolve_role(name: str, preset: dict[str, Any], role: str, served: bool = False) -> ModelRef:
    """Like resolve_model, but an unknown short name lists only the names of this role."""
    return resolve_model(name, preset, roles=(role,), served=served)
