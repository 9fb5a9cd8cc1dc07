"""One process at a time creates a database's tables: MLflow's tracking store, an Optuna study's storage.

MLflow (SqlAlchemyStore) and Optuna (RDBStorage) both create their schema on first use with no lock of
their own. Two processes that open a brand-new PostgreSQL database at the same moment both run
`CREATE TYPE studydirection ...` / `CREATE TABLE experiments ...`, and all but one die with
`UniqueViolation ... already exists`. Under `creation_lock` the first creates the tables, the others wait
and then find them. PostgreSQL: a session advisory lock in that database (released by the server if the
holder dies, and it holds across machines); SQLite: a file lock beside the machine's temp folder.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path

from distill import DistillError
from distill.tracking.redact import redact_uri

# pg_advisory_lock takes a bigint; one fixed key per database (advisory locks are scoped to a database)
ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"distill: schema creation").digest()[:8], "big", signed=True)
CONNECT_TIMEOUT_S = 10
WAIT_S = 300  # longer than any creation takes (MLflow's ~100 migrations: ~3 s here)


def dialect(uri: str) -> str:
    """`postgresql` for postgresql:// and postgresql+psycopg://, `sqlite`, ...; '' for anything else."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    return {"postgres": "postgresql"}.get(scheme.split("+")[0], scheme.split("+")[0])


def sqlite_path(uri: str) -> str:
    """The absolute path of a `sqlite:///` URI's file (relative paths are the current folder's, as SQLAlchemy's)."""
    return os.path.abspath(uri.removeprefix("sqlite:///").split("?")[0] or "mlflow.db")


_held = threading.local()  # per thread: lock file -> how deep this thread holds it


@contextmanager
def sqlite_lock(uri: str):
    """A file lock named after the database file; held across processes of this machine, and between threads
    (each flock has a file of its own). Re-entrant in a thread: the project's setup holds it while MLflow
    builds the store, and MLflow's store builder (distill.tracking.sqlite_store) takes it too; a second
    flock of the same thread would wait on itself."""
    import fcntl

    db = sqlite_path(uri)
    lock = Path(tempfile.gettempdir()) / f"distill-store-{hashlib.sha256(db.encode()).hexdigest()[:16]}.lock"
    depth = _held.__dict__.setdefault("depth", {})
    if depth.get(lock):
        depth[lock] += 1
        try:
            yield
        finally:
            depth[lock] -= 1
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        depth[lock] = 1
        try:
            yield
        finally:
            depth[lock] = 0
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def postgresql_lock(uri: str):
    """A session advisory lock on a connection of its own, for as long as the block runs."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    try:
        try:
            conn = engine.connect()
        except sqlalchemy.exc.OperationalError as e:
            reason = str(e.orig).strip().splitlines()[0] if e.orig else type(e).__name__
            raise DistillError(f"cannot reach the PostgreSQL database {redact_uri(uri)} ({reason})") from None
        with conn:
            conn.execute(sqlalchemy.text(f"SET lock_timeout = '{WAIT_S}s'"))
            try:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_KEY})
            except sqlalchemy.exc.OperationalError:
                raise DistillError(f"waited {WAIT_S} s for another process creating the tables of "
                                   f"{redact_uri(uri)}; is one stuck?") from None
            conn.commit()  # the lock is the session's, not the transaction's: nothing else is held open
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
                conn.commit()
    finally:
        engine.dispose()


def creation_lock(uri: str):
    """Held while the tables behind `uri` are created (or found); a no-op for stores that need none."""
    kind = dialect(uri)
    if kind == "sqlite":
        return sqlite_lock(uri)
    if kind == "postgresql":
        return postgresql_lock(uri)
    return nullcontext()
