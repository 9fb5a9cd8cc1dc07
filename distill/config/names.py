"""Short model names as people type them: forgiving where it is safe, strict where it is not.

`7b`, `７Ｂ` (full-width) and ` 7B ` all mean the preset's `7B`: the same model, so the same runs, tags, cache
keys and aliases. Two names match when they are equal after Unicode NFKC normalisation, trimming and case
folding; nothing looser. A name that matches none is refused with the known names and the closest ones.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable

from distill import DistillError


def name_key(name: str) -> str:
    """What two spellings of one name share: NFKC (full-width -> ASCII), trimmed, case-folded."""
    return unicodedata.normalize("NFKC", str(name)).strip().casefold()


def match_name(name: str, known: Iterable[str]) -> str | None:
    """The known name `name` is a spelling of, in the known spelling; None when there is none."""
    key = name_key(name)
    return next((k for k in known if name_key(k) == key), None)


def close_names(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Known names close to `name` (difflib's ratio >= 0.6), closest first."""
    by_key = {name_key(k): k for k in known}
    return [by_key[k] for k in difflib.get_close_matches(name_key(name), list(by_key), n=n, cutoff=0.6)]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`did you mean '7B'? ` (with its trailing space), or nothing when no known name is close."""
    close = close_names(name, known)
    return f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""


def colliding_names(names: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of distinct names that are one name to match_name (`7B` and `7b`): a preset may not have them."""
    seen: dict[str, str] = {}
    pairs = []
    for n in names:
        key = name_key(n)
        if key in seen and seen[key] != n:
            pairs.append((seen[key], n))
        seen.setdefault(key, n)
    return pairs


def teacher_names(spec: str) -> list[str]:
    """`7B+72B` -> ['7B', '72B']: one teacher, or a mix of two (`＋` counts as `+`)."""
    names = [t.strip() for t in spec.replace("＋", "+").split("+") if t.strip()]
    if not 1 <= len(names) <= 2:
        raise DistillError(f"teacher must be one name or two joined by '+' (got {spec!r})")
    return names
