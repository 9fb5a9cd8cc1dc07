"""JSON Lines in and out: a module of its own so that phases which only move records around (select,
sft, tracking) do not depend on the data loaders and the scoring code behind them (see
cache_keys.code_files)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill import DistillError


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str | Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def text_lines(path: str | Path) -> list[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file; anything else is one error naming the file and line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DistillError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                           "save the file as UTF-8") from None
    return list(enumerate((line.removesuffix("\r") for line in text.split("\n")), 1))


def json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a user's UTF-8 JSON Lines file; a line that is not
    JSON is one error naming the file and the line."""
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DistillError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        yield lineno, row


def read_train_file(path: Path) -> list[dict]:
    """The user's own training set for `sft`: JSON objects with text `prompt` and `completion`."""
    rows = []
    for lineno, row in json_lines(path):
        if not (isinstance(row, dict)
                and all(isinstance(row.get(k), str) and row[k] for k in ("prompt", "completion"))):
            raise DistillError(f"{path}:{lineno}: needs non-empty text 'prompt' and 'completion' fields")
        rows.append(row)
    return rows
