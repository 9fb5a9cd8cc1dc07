"""A tracking URI MLflow cannot store to, refused by name in one line before any work (MLflow's own
failures are tracebacks: FileNotFoundError for a folder that cannot be made, FileExistsError for a path
under a file, an unsupported-scheme exception from the model registry)."""

from __future__ import annotations

import os
from pathlib import Path

from distill import DistillError
from distill.tracking.redact import redact_uri

# What MLflow builds a tracking store for (mlflow.tracking._tracking_service.utils), by scheme; a SQLAlchemy
# URI's driver (`postgresql+psycopg`) counts as its database.
SCHEMES = {"", "file", "sqlite", "postgresql", "postgres", "mysql", "mssql", "http", "https",
           "databricks", "databricks-uc", "uc"}
HOW = "use sqlite:///<folder>/mlflow.db, http(s)://<server> or postgresql://..., or unset it for ./mlflow.db"


def scheme(uri: str) -> str:
    """`sqlite`, `postgresql` (for `postgresql+psycopg`), `http`, ...; '' for a plain path."""
    return uri.split("://", 1)[0].split("+")[0].lower() if "://" in uri else ""


def _creatable_folder(folder: Path, uri: str) -> None:
    """The folder a store's file goes in exists or can be made (MLflow makes it), and is writable."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DistillError(f"MLFLOW_TRACKING_URI={redact_uri(uri)}: {existing} is a file, not a folder; {HOW}")
    if not os.access(existing, os.W_OK | os.X_OK) or (existing != folder and not _makes(folder)):
        raise DistillError(f"MLFLOW_TRACKING_URI={redact_uri(uri)}: cannot write in {existing} "
                           f"(the store's folder {folder} cannot be made there); {HOW}")


def _makes(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return True


def check_tracking_uri(uri: str) -> None:
    """Refuse, naming it, a tracking URI whose scheme MLflow has no store for, or a SQLite file that cannot
    be where it says (its folder under a file, in a place that cannot be written, the path a folder)."""
    kind = scheme(uri)
    if kind not in SCHEMES:
        raise DistillError(f"MLFLOW_TRACKING_URI={redact_uri(uri)}: MLflow has no tracking store for "
                           f"'{kind}://' URIs; {HOW}")
    if kind != "sqlite":
        return
    path = uri.removeprefix("sqlite:///").split("?")[0]
    if not uri.startswith("sqlite:///") or path in ("", ":memory:"):
        return
    db = Path(os.path.abspath(path))
    if db.is_dir():
        raise DistillError(f"MLFLOW_TRACKING_URI={redact_uri(uri)}: {db} is a folder, not a database file; {HOW}")
    _creatable_folder(db.parent, uri)


def store_open_failed(uri: str, e: Exception) -> DistillError:
    """MLflow's refusal to open the store at `uri`, as one line naming it (a folder store MLflow 3 no longer
    opens, a schema MLflow asks to upgrade, a file that is not a database)."""
    text = str(getattr(e, "message", None) or getattr(e, "orig", None) or e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    if "MLFLOW_ALLOW_FILE_STORE" in text:
        return DistillError(f"MLFLOW_TRACKING_URI={redact_uri(uri)} is a folder store, which this MLflow no longer "
                            f"opens; use sqlite:///<folder>/mlflow.db (`mlflow migrate-filestore` moves "
                            f"its runs), or set MLFLOW_ALLOW_FILE_STORE=true")
    return DistillError(f"cannot open the tracking store MLFLOW_TRACKING_URI={redact_uri(uri)}: {first[:300]}")
