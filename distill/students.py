"""`python -m distill.students`: the registered students as a table, with the URI that pulls each back.

One row per registered version that `sft` made (a version tagged `sft_run_id`): registered name, version,
teacher, seed, accuracy (the version's `accuracy` tag, which `evaluate` sets when it scores the student; "—"
before), aliases, and the `models:/` URI for `mlflow.transformers.load_model` or `-e evaluate -P model=`.
It reads the registry of the current tracking store (MLFLOW_TRACKING_URI, else ./mlflow.db) and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from distill import DistillError
from distill.config.names import match_name

DASH = "—"
COLUMNS = ("registered name", "version", "teacher", "seed", "accuracy", "aliases", "uri")


@dataclass(frozen=True)
class Student:
    name: str
    version: int
    teacher: str
    seed: str
    accuracy: str          # percent, as the version's tag has it; DASH before evaluation
    aliases: tuple[str, ...]
    preset: str

    @property
    def uri(self) -> str:
        """The shortest alias that points here (`@teacher-7b` for the newest, else `@teacher-7b-seed1`),
        else the version number: an alias moves with retraining, a number never does."""
        return (f"models:/{self.name}@{min(self.aliases, key=len)}" if self.aliases
                else f"models:/{self.name}/{self.version}")

    def cells(self) -> tuple[str, ...]:
        return (self.name, str(self.version), self.teacher or DASH, self.seed or DASH, self.accuracy,
                ", ".join(self.aliases) or DASH, self.uri)


def _paged(search, **kwargs) -> list:
    out, token = [], None
    while True:
        page = search(page_token=token, **kwargs)
        out += list(page)
        token = page.token
        if not token:
            return out


def registered_students(preset: str = "", name: str = "", teacher: str = "") -> list[Student]:
    """Every version `sft` registered, by registered name and version; narrowed by the preset it was
    trained under, a part of its registered name, or its teacher (`7b` matches `7B`)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    aliases: dict[tuple[str, str], list[str]] = {}
    for model in _paged(client.search_registered_models, max_results=1000):
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault((model.name, str(version)), []).append(alias)
    rows = []
    for v in _paged(client.search_model_versions, max_results=1000):
        tags = v.tags or {}
        if "sft_run_id" not in tags or name and name.casefold() not in v.name.casefold():
            continue
        if preset and tags.get("preset") != preset:
            continue
        if teacher and match_name(teacher, [tags.get("teacher", "")]) is None:
            continue
        rows.append(Student(v.name, int(v.version), tags.get("teacher", ""), tags.get("seed", ""),
                            tags.get("accuracy", DASH), tuple(sorted(aliases.get((v.name, str(v.version)), []))),
                            tags.get("preset", "")))
    return sorted(rows, key=lambda s: (s.name, s.version))


def table(students: list[Student]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    rows = [COLUMNS] + [s.cells() for s in students]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _check_store() -> None:
    """The default store is ./mlflow.db: asking MLflow about a folder without one would create an empty one."""
    import mlflow

    from distill.tracking.store import ensure_tracking_reachable

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        db = uri.removeprefix("sqlite:///").split("?")[0]
        if not os.path.isfile(db):
            raise DistillError(f"no tracking store at {os.path.abspath(db)}: run this in the folder where the study "
                               "ran, or set MLFLOW_TRACKING_URI")
    ensure_tracking_reachable()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill.students", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="", help="only students trained under this preset (offline, paper, ...)")
    parser.add_argument("--name", default="", help="only registered names containing this text (qwen2.5-0.5b)")
    parser.add_argument("--teacher", default="", help="only students of this teacher (7B; any case or width)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "1")
    try:
        _check_store()
        students = registered_students(args.preset, args.name, args.teacher)
    except DistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not students:
        narrowed = ", ".join(f"{k}={v}" for k, v in vars(args).items() if v)
        print("no registered students" + (f" ({narrowed})" if narrowed else "")
              + "; `sft` registers one (docs/sft.md)")
        return 0
    print(table(students))
    return 0


if __name__ == "__main__":
    sys.exit(main())
