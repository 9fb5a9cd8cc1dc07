"""`limit`: the first N examples, and a note when N is more than there are (every phase with a `limit`)."""

from __future__ import annotations

import logging

console = logging.getLogger(__name__)


def first(items: list, limit: int | None, what: str) -> list:
    """The first `limit` items; a limit above their number takes them all and says so, rather than look
    like a run on `limit` examples (`evaluate limit=1000000` on the 250 questions of mgsm-ja)."""
    if limit is None:
        return items
    if limit > len(items):
        console.info(f"note: limit {limit} is above the {len(items)} {what}: all {len(items)} are used")
    return items[:limit]
