"""The text of a parameter as its value, written once: yes/no and comma-separated lists.

MLflow passes every `-P` value as text; distill/cli.py turns it into the phase's `*Params` fields with
these, and nothing else in the package parses such text again.
"""

from __future__ import annotations

from distill import DistillError

TRUE = frozenset({"1", "true", "yes", "y", "on"})
FALSE = frozenset({"0", "false", "no", "n", "off"})


class NotYesNo(DistillError, ValueError):
    """Text that is neither yes nor no (a ValueError too, so argparse reports it as a bad value)."""


def yes_no(text, name: str | None = None) -> bool:
    """`true`/`yes`/`1`/`on` (any case) -> True, `false`/`no`/`0`/`off` -> False, else NotYesNo naming `name`."""
    if isinstance(text, bool):
        return text
    word = str(text).strip().lower()
    if word in TRUE:
        return True
    if word in FALSE:
        return False
    raise NotYesNo(f"{name + ': ' if name else ''}expected true or false, got {text!r}")


def split_list(text) -> list[str]:
    """`7B, 72B` -> ['7B', '72B']; empty items dropped; a list passes through (as text items)."""
    if text is None:
        return []
    if isinstance(text, (list, tuple)):
        return [str(x).strip() for x in text if str(x).strip()]
    return [t.strip() for t in str(text).split(",") if t.strip()]


def lists_from_text(params) -> None:
    """A `*Params` dataclass's `__post_init__`: comma-joined text given to a `list[str]` field (a caller in
    Python, `ReportParams(teachers="7B,72B")`) becomes the list there, so no phase splits text itself."""
    import dataclasses

    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if isinstance(value, str) and str(f.type).replace(" ", "") in ("list[str]", "typing.List[str]"):
            object.__setattr__(params, f.name, split_list(value))


IGNORE_CODE = "ignore_code"


def reuse_mode(value) -> bool | str:
    """`reuse`: true, false, or ignore_code (accept a finished run of the same work whose code changed)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == IGNORE_CODE:
        return IGNORE_CODE
    try:
        return yes_no(text) if text else False
    except ValueError:
        pass
    raise DistillError(f"reuse must be true, false or {IGNORE_CODE} (got {value!r})")
