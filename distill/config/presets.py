"""Presets: readable YAML files, loaded as typed data (distill/config/preset.py) and checked."""

from __future__ import annotations

import dataclasses
import os
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from distill import DistillError
from distill.config.names import colliding_names, did_you_mean, match_name
from distill.config.preset import Preset, build

PRESET_DIR = Path(__file__).parents[1] / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


# name -> file of every preset loaded in this process: the reuse key covers the preset in use (tracking).
_PRESET_FILES: dict[str, str] = {}


@cache
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
    """Every key known and every needed key there (distill/config/preset.py). Its numbers are checked by the rules of
    the parameters that take them, by each entry point before it starts (distill.config.params.check_preset)."""
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

    check_grid(preset, path)
    grid = dataclasses.replace(preset.grid, teachers=spelled(preset.grid.teachers, preset.teachers),
                               students=spelled(preset.grid.students, preset.students))
    judged = spelled(preset.judge.teachers, preset.teachers)
    for t in judged:
        if t not in preset.teachers and t not in grid.teachers:
            raise DistillError(f"preset file {path}: judge.teachers names {t!r}, which is no teacher of the preset; "
                               f"{did_you_mean(t, preset.teachers)}teachers: {', '.join(preset.teachers)}")
    return dataclasses.replace(preset, grid=grid, judge=dataclasses.replace(preset.judge, teachers=judged))


def check_grid(preset: Preset, path: str) -> None:
    """The grid `main` and `report` run, checked when the file is read: an empty list would run no sft (`seeds:
    []`) or fall back to every model, and a name no model of its role would stop a run half-way. Names are
    matched against the preset's own tables (not through config.models, which would put the model builders
    and their data into the reuse key of every phase that loads a preset)."""
    tables = {"teachers": preset.teachers, "students": preset.students}
    for key in ("teachers", "students", "seeds"):
        values = getattr(preset.grid, key)
        if not values:
            raise DistillError(f"preset file {path}: grid.{key} is empty; name at least one")
        table = tables.get(key)
        for value in values if table is not None else ():
            if match_name(str(value), table) is None:
                other = next((k for k in tables if k != key and match_name(str(value), tables[k])), None)
                role = f"a {other[:-1]}, not a {key[:-1]}; " if other else did_you_mean(str(value), table)
                raise DistillError(f"preset file {path}: grid.{key}: unknown model name {str(value)!r} ({role}"
                                   f"known {key}: {', '.join(table)})")


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
    if candidate.is_dir() and ("/" in name_or_path or name_or_path.endswith((".yaml", ".yml"))):
        raise DistillError(f"preset {os.path.abspath(candidate)} is a directory; give a YAML file or a preset name "
                           f"({', '.join(preset_names())})")
    if name_or_path.endswith((".yaml", ".yml")) or candidate.is_file():
        if not candidate.is_file():
            raise DistillError(f"preset file not found: {os.path.abspath(candidate)}")
        return _loaded(str(candidate.resolve()))
    name = match_name(name_or_path, preset_names())  # `OFFLINE`, `Paper`: forgiving as model names are
    if name is None:
        raise DistillError(
            f"unknown preset {name_or_path!r}; {did_you_mean(name_or_path, preset_names())}known presets: "
            f"{', '.join(preset_names())} (or the path of a YAML file)"
        )
    return _loaded(str(PRESET_DIR / f"{name}.yaml"))
