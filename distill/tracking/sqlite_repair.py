"""A SQLite tracking store that MLflow left half-created or half-migrated, found and repaired.

MLflow creates a store's tables and runs its ~100 migrations with no lock of its own. Two processes that
open a brand-new file at once (two `mlflow run` typed together) run them side by side: both die, and the
file keeps `_alembic_tmp_*` tables and a schema version between two migrations, which every later open
refuses. A migration cut short (a kill, a full disk) leaves the same. Such a store that holds no work (no
run, no registered model, no experiment but Default) is created anew; one that holds work is finished
from where its migration stopped, from a copy kept beside it. Called under schema_lock.sqlite_lock.

    python -m distill.tracking.sqlite_repair [sqlite:///path/mlflow.db]   # the store of MLFLOW_TRACKING_URI by default
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path

from distill import DistillError
from distill.tracking.schema_lock import sqlite_lock, sqlite_path

console = logging.getLogger(__name__)

LEFTOVER = "_alembic_tmp_"  # the copy alembic makes of a table it rebuilds (SQLite has no ALTER COLUMN)
WORK_TABLES = ("runs", "registered_models", "logged_models")


def _tables(conn) -> list[str]:
    import sqlalchemy

    return [r[0] for r in conn.execute(sqlalchemy.text("SELECT name FROM sqlite_master WHERE type = 'table'"))]


def _count(conn, sql: str) -> int:
    import sqlalchemy

    return conn.execute(sqlalchemy.text(sql)).scalar() or 0


def schema_problem(engine) -> str | None:
    """What is wrong with the store's schema, in words; None for an empty file (MLflow creates it) and for a
    whole one (a complete older schema too: MLflow upgrades or names `mlflow db upgrade` itself)."""
    from mlflow.store.db.utils import _all_tables_exist, _get_latest_schema_revision, _get_schema_version

    with engine.connect() as conn:
        tables = _tables(conn)
    if not [t for t in tables if not t.startswith(("alembic_", LEFTOVER))]:
        return None
    leftovers = sorted(t for t in tables if t.startswith(LEFTOVER))
    version = _get_schema_version(engine)
    if leftovers:
        return f"leftover tables {', '.join(leftovers)} of a migration cut short at schema version {version}"
    if version is None:
        return "tables without a schema version (their creation was cut short)"
    if version != _get_latest_schema_revision() and not _all_tables_exist(engine):
        return f"schema version {version} with tables missing"
    return None


def holds_work(engine) -> bool:
    """Whether anything a user made is in the store: a run, a registered or logged model, an experiment."""
    with engine.connect() as conn:
        tables = set(_tables(conn))
        if any(_count(conn, f"SELECT COUNT(*) FROM {t}") for t in WORK_TABLES if t in tables):
            return True
        return "experiments" in tables and bool(
            _count(conn, "SELECT COUNT(*) FROM experiments WHERE name != 'Default'"))


def _drop_all(engine) -> None:
    import sqlalchemy

    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("PRAGMA foreign_keys = OFF"))
        for table in _tables(conn):
            if not table.startswith("sqlite_"):
                conn.execute(sqlalchemy.text(f'DROP TABLE IF EXISTS "{table}"'))


def _finish_migration(engine, uri: str, problem: str) -> str:
    """Drop the half-made copies of tables that still exist, then run the migrations left, on the file
    itself; a copy of the file as it was is kept beside it, and put back if the migrations fail."""
    import sqlalchemy
    from mlflow.store.db.utils import _upgrade_db

    db = Path(sqlite_path(uri))
    backup = db.with_name(f"{db.name}.before-repair-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.copy2(db, backup)
    with engine.begin() as conn:
        tables = set(_tables(conn))
        lost = sorted(t for t in tables if t.startswith(LEFTOVER) and t.removeprefix(LEFTOVER) not in tables)
        if lost:
            raise DistillError(f"the tracking store {db} has {problem}, and the table "
                               f"{lost[0].removeprefix(LEFTOVER)} exists only as {lost[0]}: it cannot be repaired "
                               f"here; restore a backup of the file (nothing was changed)")
        for table in sorted(t for t in tables if t.startswith(LEFTOVER)):
            conn.execute(sqlalchemy.text(f'DROP TABLE "{table}"'))
    try:
        _upgrade_db(engine)
    except Exception as e:  # noqa: BLE001 - whatever the migration met, the file goes back as it was
        engine.dispose()
        shutil.copy2(backup, db)
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0][:200]
        raise DistillError(f"the tracking store {db} has {problem}; finishing its migration failed ({reason}); "
                           f"the file is as it was (a copy: {backup}); restore a backup of it") from None
    return f"repaired the tracking store {db}: it had {problem}; its migration is finished (the file before: {backup})"


def repair(uri: str) -> str | None:
    """Repair the SQLite store at `uri` if MLflow left it half-created or half-migrated; the line saying what
    was done, or None when nothing was wrong. Call under sqlite_lock(uri)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    if not Path(sqlite_path(uri)).is_file():
        return None
    engine = sqlalchemy.create_engine(uri, poolclass=NullPool)
    try:
        problem = schema_problem(engine)
        if problem is None:
            return None
        if not holds_work(engine):
            _drop_all(engine)
            return (f"repaired the tracking store {sqlite_path(uri)}: it had {problem} (two processes created it "
                    f"at once, or its creation was cut short) and held no runs; it is created anew")
        return _finish_migration(engine, uri, problem)
    finally:
        engine.dispose()


def main(argv: list[str]) -> int:
    """The documented repair: the store of MLFLOW_TRACKING_URI (or the URI given), under the creation lock."""
    import mlflow

    uri = argv[0] if argv else mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        print(f"error: {uri} is not a SQLite store (sqlite:///...); only those are repaired here", file=sys.stderr)
        return 2
    try:
        with sqlite_lock(uri):
            done = repair(uri)
            # a store created anew gets its tables now, through MLflow's own store lookup: the `sqlite` entry point
            # of pyproject.toml (distill.tracking.sqlite_store.build), so its artifacts go beside it
            mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except DistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(done or f"the tracking store {sqlite_path(uri)} is whole: nothing to repair")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
