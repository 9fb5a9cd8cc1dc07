"""A SQLite store moved to another folder with its artifacts: the locations written in it follow.

MLflow writes every artifact location into the database as an absolute path (a relative one is made
absolute against the current folder when an experiment is created), so a store copied elsewhere still
points at the old folder, and loses its artifacts when that folder goes. After copying the folder (the
database file and the `mlruns` beside it) to its new place:

    python -m distill.tracking.sqlite_move /old/folder sqlite:////new/folder/mlflow.db

rewrites, in the copy, every location under /old/folder (experiments, runs, logged models, registered
model versions) to the same place under /new/folder; nothing else is changed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from distill import DistillError
from distill.tracking.schema_lock import sqlite_lock, sqlite_path

# (table, column) where MLflow keeps a path or file: URI of artifacts
LOCATIONS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
             ("logged_models", "artifact_location"), ("model_versions", "source"),
             ("model_versions", "storage_location"))


def _prefixes(folder: Path) -> list[str]:
    """How a location under `folder` is written: a path, or a file: URI with one or three slashes."""
    path = str(folder)
    return [f"{folder.as_uri()}/", f"file:{path}/", f"{path}/"]


def move(uri: str, old_folder: str) -> int:
    """Rewrite the locations under `old_folder` in the store at `uri` to the store's own folder; how many."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    db = Path(sqlite_path(uri))
    if not db.is_file():
        raise DistillError(f"no database file at {db}: copy the old folder there first")
    old, new = Path(old_folder).resolve(), db.parent
    engine = sqlalchemy.create_engine(uri, poolclass=NullPool)
    changed = 0
    try:
        with engine.begin() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
            for table, column in LOCATIONS:
                if table not in tables:
                    continue
                for before, after in zip(_prefixes(old), _prefixes(new)):
                    changed += conn.execute(sqlalchemy.text(
                        f"UPDATE {table} SET {column} = :after || substr({column}, :n) "
                        f"WHERE substr({column}, 1, :m) = :before"),
                        {"after": after, "before": before, "n": len(before) + 1, "m": len(before)}).rowcount
    finally:
        engine.dispose()
    return changed


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].startswith("sqlite:///"):
        print("usage: python -m distill.tracking.sqlite_move OLD_FOLDER sqlite:///NEW_FOLDER/mlflow.db",
              file=sys.stderr)
        return 2
    old, uri = argv
    try:
        with sqlite_lock(uri):
            n = move(uri, old)
    except DistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{n} locations under {Path(old).resolve()} now under {Path(sqlite_path(uri)).parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
