"""Presets (readable YAML files) and the resolution of short model names through them."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from distill import DistillError
from distill.names import colliding_names, did_you_mean, match_name
from distill.preset import ModelEntry, Preset, build

PRESET_DIR = Path(__file__).parent / "presets"
RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


# name -> file of every preset loaded in this process: the reuse key covers the preset in use (tracking).
_PRESET_FILES: dict[str, str] = {}


@lru_cache(maxsize=None)
def _load_preset_file(path: str) -> Preset:
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
    return parse_preset(data, path)


def parse_preset(data: dict[str, Any], path: str) -> Preset:
    """Every key known and every needed key there (distill/preset.py). Its numbers are checked by the rules of
    the parameters that take them, by each entry point before it starts (distill.params.check_preset)."""
    preset = build(Preset, data, path)
    return dataclasses.replace(canonical_lists(preset, path), raw=data)


def canonical_lists(preset: Preset, path: str) -> Preset:
    """The preset's own lists of names in the spelling of its tables (`grid.teachers: [7b]` -> `7B`), so that
    `main`, the executors and `report` compare names by equality. Two table names that are one name when
    matched (`7B` and `7b`) are refused, and so is a judged teacher that is no teacher: judging would silently
    fall back to every teacher."""
    for role in ("teachers", "students"):
        for a, b in colliding_names(getattr(preset, role)):
            raise DistillError(f"preset file {path}: {role} {a!r} and {b!r} are one name (names match "
                               "ignoring case and full-width forms); rename one")

    def spelled(names: list, table: dict) -> list[str]:
        return [match_name(str(n), table) or str(n) for n in names]

    grid = dataclasses.replace(preset.grid, teachers=spelled(preset.grid.teachers, preset.teachers),
                               students=spelled(preset.grid.students, preset.students))
    judged = spelled(preset.judge.teachers, preset.teachers)
    for t in judged:
        if t not in preset.teachers and t not in grid.teachers:
            raise DistillError(f"preset file {path}: judge.teachers names {t!r}, which is no teacher of the preset; "
                               f"{did_you_mean(t, preset.teachers)}teachers: {', '.join(preset.teachers)}")
    return dataclasses.replace(preset, grid=grid, judge=dataclasses.replace(preset.judge, teachers=judged))


def _loaded(path: str) -> Preset:
    preset = _load_preset_file(path)
    _PRESET_FILES[preset.name] = path
    return preset


def preset_file(name: str) -> Path | None:
    """The file a preset of this name was loaded from in this process, else the shipped one."""
    if name in _PRESET_FILES:
        return Path(_PRESET_FILES[name])
    shipped = PRESET_DIR / f"{name}.yaml"
    return shipped if shipped.is_file() else None


def load_preset(name_or_path: str) -> Preset:
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


# What tells every Hugging Face library not to ask the Hub, and MLflow not to send usage telemetry (a
# background request in every process; here, in every step of `main`). Set by offline_env only.
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "MLFLOW_DISABLE_TELEMETRY")


def offline_env(env: dict | None = None, force: bool = False) -> dict:
    """The offline variables into `env` (os.environ by default): what is set there already wins unless `force`."""
    env = os.environ if env is None else env
    for name in OFFLINE_ENV:
        if force:
            env[name] = "1"
        else:
            env.setdefault(name, "1")
    return env


def apply_offline_env(preset: Preset) -> None:
    """Without a network every Hub lookup waits for a timeout; the offline preset never asks."""
    if preset.name == "offline":
        offline_env()


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

    A short name matches in any case and width (`7b`, `７Ｂ` -> `7B`: distill/names.py) and comes back in the
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
