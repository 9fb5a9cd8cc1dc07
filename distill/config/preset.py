"""A preset file as typed data: one dataclass per YAML section, built once when the file is loaded.

The YAML file is the only place a preset's values live: the code holds no copies of them. A key the
dataclasses do not know, or a key they need that the file lacks, is refused with the file and the key
named. A field with a default of None is a key the file may leave out; every other field must be there
(`X | None` without a default: the key must be there, `null` allowed).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from distill import DistillError


@dataclass(frozen=True)
class ModelEntry:
    """A model of the preset: `{model: ..., tensor_parallel_size: ...}`, or only the model as text."""

    model: str
    tensor_parallel_size: int | None = None


@dataclass(frozen=True)
class Data:
    train: str
    train_limit: int | None
    eval_set: str


@dataclass(frozen=True)
class Generation:
    max_new_tokens: int
    batch_size: int
    translate_max_new_tokens: int


@dataclass(frozen=True)
class Vllm:
    """backend=vllm only: the share of each GPU's memory the engine takes (weights, then KV cache), the
    prompts per `LLM.generate` call (one shard: each call waits for its longest answer), and whether the engine
    skips compilation and CUDA graphs (`enforce_eager`: on tiny models compiling costs more than it saves)."""

    gpu_memory_utilization: float
    shard_size: int
    enforce_eager: bool = False


@dataclass(frozen=True)
class Select:
    n: int
    seed: int
    filter: str
    keep_truncated: bool
    dev_size: int


class SftSettings(dict):
    """The `sft:` section as written: trl.SFTConfig fields by their TRL names, and the few this project adds
    (distill/training/sft_config.py checks every key against them where a phase trains: it imports TRL, and no other
    phase's reuse key should hash it). Read as attributes: `preset.sft.bf16`."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the preset's sft section has no '{name}'") from None


@dataclass(frozen=True)
class Baseline:
    mode: str
    repetition_penalty: float
    shots: int | None = None  # left out: `evaluate mode=few-shot` asks for shots=<n>


@dataclass(frozen=True)
class Judge:
    model: str
    base_url: str | None
    teachers: list[str]


@dataclass(frozen=True)
class Sweep:
    """`n_trials`, and the search space: trl.SFTConfig fields by name, each `{low, high}` (with `log: true` or
    `step: 1` where it applies) or `{choices: [...]}`; a field left out is not searched."""

    n_trials: int
    space: dict | None = None

    def ranges(self) -> dict[str, dict]:
        return dict(self.space or {})


@dataclass(frozen=True)
class Grid:
    teachers: list[str]
    students: list[str]
    seeds: list[int]
    eval_limit: int | None
    gpu_hour_price: float | None = None  # what `main -P plan=true` prices a GPU-hour at; none: no cost


@dataclass(frozen=True)
class Preset:
    name: str
    needs_gpu: bool
    backend: str
    tensor_parallel_size: int
    translator: ModelEntry
    teachers: dict[str, ModelEntry]
    students: dict[str, ModelEntry]
    tokenizers: dict[str, str]
    data: Data
    generation: Generation
    vllm: Vllm
    select: Select
    sft: SftSettings
    baseline: Baseline
    judge: Judge
    sweep: Sweep
    grid: Grid
    description: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)  # the file's mapping, as read

    def as_dict(self) -> dict[str, Any]:
        """The preset as the file wrote it (plain YAML values), for what needs a mapping."""
        return self.raw


def _optional_key(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _nullable(tp) -> bool:
    return isinstance(tp, types.UnionType) and type(None) in typing.get_args(tp)


def build(cls, data: Any, path: str, where: str = ""):
    """`data` (a YAML mapping) as `cls`, recursively; unknown and missing keys refused by name."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name != "raw"]
    if not isinstance(data, dict):
        raise DistillError(f"preset file {path}: '{where.rstrip('.')}' must be a mapping (got {data!r})")
    known = {f.name for f in fields}
    for key in data:
        if key not in known:
            raise DistillError(f"preset file {path} has an unknown key '{where}{key}' "
                               f"(known here: {', '.join(sorted(known))})")
    values = {}
    for f in fields:
        key, tp = f"{where}{f.name}", hints[f.name]
        if f.name not in data:
            if _optional_key(f):
                continue
            raise DistillError(f"preset file {path} has no '{key}' (see distill/presets/paper.yaml for the shape)")
        value = data[f.name]
        if value in (None, "", {}) and not _nullable(tp):
            raise DistillError(f"preset file {path} has no '{key}' (see distill/presets/paper.yaml for the shape)")
        values[f.name] = _value(tp, value, path, key)
    return cls(**values)


def _value(tp, value, path: str, key: str):
    if value is None:
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)] if _nullable(tp) else [tp]
    base = args[0]
    if base is ModelEntry:
        return _entry(base, value, path, key)
    if base is SftSettings or base is dict:
        if not isinstance(value, dict):
            raise DistillError(f"preset file {path}: '{key}' must be a mapping (got {value!r})")
        return base(value)
    if dataclasses.is_dataclass(base):
        return build(base, value, path, key + ".")
    if typing.get_origin(base) is dict:
        if not isinstance(value, dict):
            raise DistillError(f"preset file {path}: '{key}' must map short names to models")
        entry_type = typing.get_args(base)[1]
        return {str(k): _entry(entry_type, v, path, f"{key}.{k}") for k, v in value.items()}
    if typing.get_origin(base) is list:
        return list(value) if isinstance(value, list) else [value]
    return value


def _entry(tp, value, path: str, key: str):
    if tp is ModelEntry:
        if value in (None, "") or isinstance(value, dict) and not value.get("model"):
            raise DistillError(f"preset file {path}: {key} names no model")
        return build(ModelEntry, value if isinstance(value, dict) else {"model": value}, path, key + ".")
    return str(value)
