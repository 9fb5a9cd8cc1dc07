"""A value against its rule, refused in one line: the parameter, the value and what is allowed.

A `Rule` (integer or finite number, its range) is declared on the parameter it belongs to
(distill/config/params.py, `param(rule=...)`); `check` applies it to a typed value or to one a preset supplies,
`check_items` to each item of a list (`seeds=1,2,3`). Zero is never read as "the default".
"""

from __future__ import annotations

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
SEED = Rule(int, 0, SEED_MAX)


def check(rule: Rule | None, name: str, value, where: str = "", optional: bool = False):
    """`value` if `rule` allows it (None passes when `optional`: the default); else one clear DistillError.
    `name` is what the message calls it: the parameter, or `preset <file>: <path>` for a preset's value."""
    if rule is None or (value is None and optional):
        return value
    if not rule.ok(value):
        hint = "; leave it out for the default" if optional and "leave it out" not in rule.note else ""
        raise DistillError(f"{where}{name} must be {rule.allowed()} (got {value!r}){hint}")
    return int(value) if rule.kind is int else value


def check_items(rule: Rule, name: str, items: list) -> list:
    """Each item of a list parameter (`seeds=1,2,3`, text or numbers) by the rule; the items as given."""
    for item in items:
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise DistillError(f"{name} must be comma-separated numbers, each {rule.allowed()} "
                               f"(got {item!r} in {','.join(map(str, items))!r})") from None
        check(rule, f"each of {name}", int(number) if number.is_integer() else number)
    return items


def check_from_preset(rule: Rule, path: str, value, where: str):
    """A number a preset supplies (a list item by item), named by the file and its path in it."""
    checked = []
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, str):
            raise DistillError(f"preset {where}: {path} must be a number (got {v!r}; YAML reads 1e-5 as "
                               "text, write 1.0e-5)")
        checked.append(check(rule, path, v, where=f"preset {where}: "))
    return checked if isinstance(value, list) else checked[0]
