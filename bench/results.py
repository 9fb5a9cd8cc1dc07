"""One results writer for every benchmark: the printed tables, one JSON record and its Markdown twin.

A script builds a `Results`, prints through it (`say`, `table`) and ends with `write(payload)`: the JSON
gets the command, arguments, environment, load average and wall time beside the script's own figures,
and the Markdown file next to it holds the same tables, so a result can be pasted into an issue as is.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from _common import OUT_DIR, ROOT, log, now

PACKAGES = ("torch", "transformers", "trl", "mlflow")


def add_common_args(ap: argparse.ArgumentParser, name: str) -> None:
    """`--dry` (the same code paths on tiny inputs, seconds: what CI runs) and `--out`."""
    ap.add_argument("--dry", action="store_true", help="tiny inputs through every code path, in seconds (CI runs it)")
    ap.add_argument("--out", type=Path, default=None, help=f"JSON result (default bench/out/{name}-<time>.json; "
                                                           "a .md with the same tables is written beside it)")


def environment(**extra) -> dict:
    """Versions of the libraries that set the figures, torch's threads and the machine."""
    env = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            env[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            env[package] = None
    if "torch" in sys.modules:
        env["torch_threads"] = sys.modules["torch"].get_num_threads()
    return {**env, "cpu_count": os.cpu_count(), "platform": platform.platform(), **extra}


class Results:
    """What one benchmark run prints and writes."""

    def __init__(self, name: str, args: argparse.Namespace | None = None):
        self.name, self.args = name, args
        self.dry = bool(getattr(args, "dry", False))
        self.started = datetime.now(timezone.utc)
        self.t0 = now()
        self.load_before = os.getloadavg()
        self.markdown: list[str] = [f"# {name}{' (dry)' if self.dry else ''}", "",
                                    f"`{' '.join([Path(sys.executable).name, *sys.argv])}`", ""]

    def say(self, text: str = "") -> None:
        """A line of the report: printed, and a paragraph line of the Markdown."""
        print(text, flush=True)
        self.markdown.append(text + ("  " if text else ""))

    def table(self, header: list[str], rows: list[list], title: str | None = None) -> None:
        """An aligned table (first column left, the others right); a pipe table in the Markdown."""
        cells = [[str(c) for c in row] for row in rows]
        widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]

        def line(row: list[str]) -> str:
            return " ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

        head = line([str(h) for h in header])
        print(*([title] if title else []), head, "-" * len(head), *map(line, cells), sep="\n", flush=True)
        self.markdown += [*([f"**{title}**", ""] if title else []), "| " + " | ".join(map(str, header)) + " |",
                          "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
                          *("| " + " | ".join(r) + " |" for r in cells), ""]

    def note_load(self, repeats: int) -> None:
        """A note when other processes shared the CPU while the figures were taken."""
        after = os.getloadavg()[0]
        if max(self.load_before[0], after) > 0.5:
            self.say(f"note: 1-min load average {self.load_before[0]:.2f} before, {after:.2f} after: other processes "
                     f"share the CPU, so the figures are best-of-{repeats}.")

    def write(self, payload: dict, out: Path | None = None, **environment_extra) -> Path:
        """The JSON record (payload plus run facts) and the Markdown beside it; prints where they went."""
        total = now() - self.t0
        args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args or argparse.Namespace()).items()}
        record = {"started_utc": self.started.isoformat(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
                  "args": args, "dry": self.dry, **payload,
                  "environment": environment(loadavg_before=self.load_before, loadavg_after=os.getloadavg(),
                                             **environment_extra),
                  "total_seconds": total}
        stamp = self.started.strftime("%Y%m%dT%H%M%SZ")
        out = out or OUT_DIR / f"{self.name}-{'dry-' if self.dry else ''}{stamp}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
        out.with_suffix(".md").write_text("\n".join([*self.markdown, f"total {total:.0f} s", ""]), encoding="utf-8")
        log(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} and its .md (total {total:.0f} s)")
        return out
