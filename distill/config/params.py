"""Each parameter of an entry point declared once, on its `*Params` field: `param(default, help=..., preset=...,
rule=..., unkeyed=...)`.

From that one declaration: the command line and its `--help` (distill/cli.py); the merge with the preset and
the checks (`resolve`: an empty field takes the preset's value at its path, and every value, typed or from the
preset, meets its field's rule); the preset's numbers checked before a run starts (`check_preset`); the reuse
key (`key_payload`: every field, unless its declaration says why it cannot change the phase's output); the
the docs' parameters page and MLproject's `also:` lines (distill/params_doc.py).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distill.config.checks import COUNT, SEED, Rule, check, check_from_preset, check_items
from distill.config.params_text import reuse_mode

SPEC = "distill.param"


@dataclass(frozen=True)
class Default:
    """What an empty value means where that is no single preset value. `text` says it (help, docs);
    `value(params, preset)`, when given, computes it from the fields resolved before this one (else the phase
    does, or empty stays empty); `paths`: the preset values it reads, checked by the field's rule."""

    text: str
    value: Callable[[Any, Any], Any] | None = None
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Param:
    help: str
    preset: str | Default | None = None       # the preset path an empty value takes, or a Default
    rule: Rule | None = None                  # integer or finite number, and its range
    unkeyed: str = ""                         # why the value cannot change the output; empty: in the reuse key
    parse: Callable[[str], Any] | None = None  # text -> value, where the field's type does not say


def param(default: Any = dataclasses.MISSING, *, help: str, preset: str | Default | None = None,
          rule: Rule | None = None, unkeyed: str = "", parse: Callable | None = None,
          factory: Any = dataclasses.MISSING) -> Any:
    """A `*Params` field and everything about it (no default and no factory: a required parameter)."""
    return dataclasses.field(default=default, default_factory=factory,
                             metadata={SPEC: Param(help, preset, rule, unkeyed, parse)})


def same_as(cls, name: str) -> Any:
    """A field declared as `cls.name` is (its default, help, preset, rule): the knob another class shares."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)


def declared(cls) -> list[tuple[dataclasses.Field, Param]]:
    """The fields of a `*Params` class with their declarations; a field declared without param() is refused."""
    out = []
    for f in dataclasses.fields(cls):
        if SPEC not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with distill.config.params.param()")
        out.append((f, f.metadata[SPEC]))
    return out


def doc_order(cls) -> list[tuple[dataclasses.Field, Param]]:
    """The order `--help` and the parameters page list a class's fields in: required ones, the class's own, those it
    inherits (GenerationOptions), and `reuse` last."""
    own = set(cls.__dict__.get("__annotations__", {}))
    return sorted(declared(cls), key=lambda fs: (not required(fs[0]), fs[0].name == "reuse", fs[0].name not in own))


def spec(cls, name: str) -> Param:
    return next(s for f, s in declared(cls) if f.name == name)


def required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def preset_paths(s: Param) -> tuple[str, ...]:
    """The preset values a field may take (`teachers.*.tensor_parallel_size`: one per teacher)."""
    if isinstance(s.preset, str):
        return (s.preset,)
    return s.preset.paths if isinstance(s.preset, Default) else ()


def preset_values(preset, path: str) -> list[tuple[str, Any]]:
    """(path, value) of every preset value at `path`; `*` stands for every key of a table."""
    found = [("", preset)]
    for part in path.split("."):
        step = []
        for where, node in found:
            table = node if isinstance(node, dict) else None
            keys = list(table) if part == "*" and table is not None else [part]
            for key in keys:  # a path the preset's shape lacks is a wrong declaration: it raises
                value = table[key] if table is not None else getattr(node, key)
                step.append((f"{where}.{key}".lstrip("."), value))
        found = step
    return found


def preset_value(preset, path: str):
    return preset_values(preset, path)[0][1]


def _empty(value) -> bool:
    return value is None or value == "" or value == []


def preset_file_name(preset) -> str:
    from distill.config.presets import preset_file

    return str(preset_file(preset.name) or preset.name)


def check_value(name: str, s: Param, value):
    """A typed value (a list item by item) by its field's rule; empty passes (the default)."""
    if s.rule is None or _empty(value):
        return value
    if isinstance(value, list):
        return check_items(s.rule, name, value)
    return check(s.rule, name, value, optional=True)


def resolve(p, preset):
    """`p` merged with the preset: an empty field (None, "" or []) takes the preset's value at its path, or its
    Default's; every value is checked by its field's rule, a preset's named by file and path. The values a
    phase uses and logs."""
    hints = typing.get_type_hints(type(p))
    values: dict[str, Any] = {}
    for f, s in declared(type(p)):
        value = getattr(p, f.name)
        if not _empty(value):
            values[f.name] = check_value(f.name, s, value)
            continue
        if isinstance(s.preset, str):
            value = preset_value(preset, s.preset)
            if s.rule is not None and value is not None:
                value = check_from_preset(s.rule, s.preset, value, preset_file_name(preset))
        elif isinstance(s.preset, Default) and s.preset.value is not None:
            value = check_value(f.name, s, s.preset.value(dataclasses.replace(p, **values), preset))
        if value is not None and typing.get_origin(hints[f.name]) is list:
            value = [str(v) for v in value]
        values[f.name] = value
    return dataclasses.replace(p, **values)


def check_preset(preset, classes) -> None:
    """Every preset value the fields of `classes` may take, by the rule of the field that takes it: a bad
    number stops an entry point before any run starts, whether or not this run would have read it."""
    for cls in classes:
        for _f, s in declared(cls):
            for path in preset_paths(s) if s.rule is not None else ():
                for where, value in preset_values(preset, path):
                    if value is not None:
                        check_from_preset(s.rule, where, value, preset_file_name(preset))


def key_payload(p, preset, **derived) -> dict[str, Any]:
    """The reuse key's parameters: every field declared as keyed, as resolved (`preset` by the preset's name; its
    content is in the code key), and what the phase derives and adds by name (model sources, data digests)."""
    out = {f.name: getattr(p, f.name) for f, s in declared(type(p)) if not s.unkeyed}
    if "preset" in out:
        out["preset"] = preset.name
    return {**out, **derived}


def default_text(f: dataclasses.Field, s: Param) -> str:
    """What an empty value is, in words: `(required)`, a literal, the preset's path, or the Default's text."""
    if required(f):
        return "(required)"
    if isinstance(s.preset, Default):
        return s.preset.text
    if isinstance(s.preset, str):
        return f"preset's `{s.preset}`"
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return f"`{','.join(map(str, value))}`"
    return "empty" if value in (None, "") else f"`{value}`"


# Fields several phases share: one factory each, a Field of its own for every class that uses it.

def preset_param() -> Any:
    return param("offline", help="`offline`, `paper`, or the path of a YAML file shaped like "
                                 "`distill/presets/paper.yaml`")


def reuse_param(default: bool = True, help: str = "") -> Any:
    return param(default, parse=reuse_mode, unkeyed="how a finished run is found, not what a run computes",
                 help=help or "a FINISHED run with the same parameters, inputs and code is reused, not redone; "
                              "`false` redoes it; `ignore_code` also reuses one whose code changed (the files are "
                              "named)")


def limit_param(help: str, preset: str | None = None, note: str = "a number of examples") -> Any:
    return param(None, help=help, preset=preset or Default("all"), rule=Rule(int, 1, note=note))


def seed_param(default: int | None, help: str, preset: str | None = None) -> Any:
    return param(default, help=help, preset=preset, rule=SEED)


def count_param(default: int | None, help: str, preset: str | Default | None = None, unkeyed: str = "") -> Any:
    return param(default, help=help, preset=preset, rule=COUNT, unkeyed=unkeyed)


def upstream_param(help: str, empty: str | None = None, factory: Any = dataclasses.MISSING) -> Any:
    """A run id (or ids) of the phase's input, required where `empty` does not say what none means: not keyed
    itself, the run it names is the key's upstream id."""
    kwargs = {"factory": factory} if factory is not dataclasses.MISSING else {"default": ""} if empty else {}
    return param(help=help, preset=Default(empty) if empty else None,
                 unkeyed="names the input run, whose id is in the key as its upstream", **kwargs)
