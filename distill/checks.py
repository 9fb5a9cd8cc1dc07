"""Checks of the values a user typed, in one place, so every phase refuses a bad value the same way
and before any model loads.

`RULES` says, per parameter name, what is allowed; `check_params` applies it to a phase's `*Params`
dataclass right after parsing (distill/cli.py), `check` to a value resolved from a preset, and
`check_preset` to the numbers of a preset file. A value is refused with one line that names the
parameter, the value and what is allowed; zero is never read as "the default".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from distill import DistillError


@dataclass(frozen=True)
class Rule:
    kind: type                      # int or float
    low: float | None = None
    high: float | None = None
    low_open: bool = False          # low itself refused
    high_open: bool = False         # high itself refused
    note: str = ""                  # what the value means, when the range alone does not say

    def allowed(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            lo, hi = ("(" if self.low_open else "["), (")" if self.high_open else "]")
            rng = f" in {lo}{_fmt(self.low)}, {_fmt(self.high)}{hi}"
        elif self.low is not None:
            rng = f" {'>' if self.low_open else '>='} {_fmt(self.low)}"
        elif self.high is not None:
            rng = f" {'<' if self.high_open else '<='} {_fmt(self.high)}"
        else:
            rng = ""
        return what + rng + (f" ({self.note})" if self.note else "")

    def ok(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not (isinstance(value, int) or float(value).is_integer()):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or self.low_open and value == self.low):
            return False
        if self.high is not None and (value > self.high or self.high_open and value == self.high):
            return False
        return True


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


COUNT = Rule(int, 1)
SEED_MAX = 2**32 - 1  # numpy's and torch's seeds

RULES: dict[str, Rule] = {
    # how much data
    "limit": Rule(int, 1, note="a number of examples"),
    "train_limit": Rule(int, 1, note="a number of training questions"),
    "eval_limit": Rule(int, 1, note="a number of eval questions"),
    "dev_limit": Rule(int, 1, note="a number of dev questions"),
    "n": Rule(int, 1, note="questions to select"),
    "dev_size": Rule(int, 0, note="0: no dev split"),
    "n_trials": COUNT,
    "worker": Rule(int, 0, note="index of this worker in a shared study"),
    # generation
    "max_new_tokens": COUNT,
    "translate_max_new_tokens": COUNT,
    "batch_size": COUNT,
    "shard_size": COUNT,
    "gpu_memory_utilization": Rule(float, 0, 1, low_open=True, note="the share of each GPU's memory vLLM takes"),
    "tensor_parallel_size": COUNT,
    "shots": Rule(int, 1, 8, note="MGSM-ja has 8 exemplars"),
    "repetition_penalty": Rule(float, 0, 10, low_open=True, note="1.0: none"),
    # judge
    "concurrency": COUNT,
    "timeout": Rule(float, 0, low_open=True, note="seconds"),
    "max_retries": Rule(int, 0),
    # training
    "learning_rate": Rule(float, 0, 1, low_open=True),
    "num_train_epochs": Rule(float, 0, 1000, low_open=True),
    "per_device_train_batch_size": COUNT,
    "gradient_accumulation_steps": COUNT,
    "max_grad_norm": Rule(float, 0, note="0: no clipping"),
    "warmup_ratio": Rule(float, 0, 1, high_open=True),
    "max_length": Rule(int, 1, note="tokens per example"),
    "save_steps": Rule(int, 1, note="steps between checkpoints; leave it out for one per epoch"),
    "seed": Rule(int, 0, SEED_MAX),
    "seeds": Rule(int, 0, SEED_MAX),
}


def check(name: str, value, where: str = "", optional: bool = False, label: str | None = None):
    """`value` if RULES[name] allows it (None passes when `optional`); else one clear DistillError."""
    rule = RULES.get(name)
    if rule is None or (value is None and optional):
        return value
    if not rule.ok(value):
        hint = "; leave it out for the default" if optional and "leave it out" not in rule.note else ""
        raise DistillError(f"{where}{label or name} must be {rule.allowed()} (got {value!r}){hint}")
    return int(value) if rule.kind is int else value


def check_params(params) -> None:
    """Every numeric field of a `*Params` dataclass that has a rule; None (empty) means the default."""
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if isinstance(value, list) and f.name in RULES:  # a list (`seeds=1,2,3`)
            for item in value:
                try:
                    number = float(item)
                except ValueError:
                    raise DistillError(f"{f.name} must be comma-separated numbers, each {RULES[f.name].allowed()} "
                                       f"(got {item!r} in {','.join(value)!r})") from None
                check(f.name, int(number) if number.is_integer() else number, label=f"each of {f.name}")
        else:
            check(f.name, value, optional=True)


def check_positive(name: str, value, allow_none: bool = False):
    """For values without a rule of their own: an integer or number > 0."""
    if name in RULES:
        return check(name, value, optional=allow_none)
    if value is None and allow_none:
        return None
    if not Rule(float, 0, low_open=True).ok(value):
        raise DistillError(f"{name} must be > 0 (got {value!r})")
    return value


def check_preset(preset, where: str, _path: str = "") -> None:
    """The numbers of a preset file, by the same rules, at any depth (lists item by item)."""
    for key, value in preset.items():
        path = f"{_path}{key}"
        if isinstance(value, dict):
            check_preset(value, where, path + ".")
            continue
        name = "seed" if key == "seeds" else str(key)
        if name not in RULES or value is None:
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str):
                raise DistillError(f"preset {where}: {path} must be a number (got {v!r}; YAML reads 1e-5 as "
                                   "text, write 1.0e-5)")
            check(name, v, where=f"preset {where}: ", label=path)
