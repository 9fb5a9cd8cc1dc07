"""A full disk as one line: the path being written, what it was, and how much room there is.

A write that fails for room (ENOSPC, a quota's EDQUOT, `ulimit -f`'s EFBIG) surfaces deep in MLflow,
shutil or SQLite, and on a full disk that also holds the tracking store it is buried under MLflow's
tracebacks of marking the run FAILED ("database or disk is full"). Here it becomes one line:

    no space left on device writing /x/mlruns/1/<run>/artifacts/figures/plotly.min.mjs (report figures,
    4.7 MB to write): 2.9 MB free on /x; free space there and type the same command again

The partial file of a failed copy (an artifact being logged) is removed first: it is of no use, and the
room it took is what the store needs to mark the run FAILED. Where the store cannot be written even so,
the line says that its runs stay RUNNING until a later command finds their process gone.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from distill import DistillError

NO_SPACE = "no space left on device"
REASONS = {errno.ENOSPC: NO_SPACE, errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large"}
STORE_FULL = "database or disk is full"   # SQLite's SQLITE_FULL, as MLflow's store raises it
AGAIN = "free space there and type the same command again"


class DiskFull(DistillError):
    """A write that found no room, said in one line (the CLI prints it as `error: ...`, exit 2): what failed
    and the room there (`head`), then what to do (`remedy`)."""

    def __init__(self, head: str, remedy: str):
        super().__init__(f"{head}; {remedy}")
        self.head, self.remedy = head, remedy


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def mount_of(path: str) -> str:
    """The mount point the path (or its nearest existing folder) lies on."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and every one it was raised from or while handling, each once."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def is_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in REASONS


def is_store_full(e: BaseException) -> bool:
    return STORE_FULL in str(e)


def store_path() -> str | None:
    """The SQLite file of the tracking store, when it is one."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    return uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None


def describe(e: OSError, what: str, where: str = "") -> tuple[str, str]:
    """What failed and the room there, and what to do, for a write that found no room; a failed copy's
    partial target removed first. `where`: the folder being written, for an error that names no file (a
    write() to a file opened earlier)."""
    target = e.filename2 or e.filename or where
    size = ""
    if e.filename2 and os.path.isfile(e.filename2):  # a copy: its target holds only the part that fit
        os.remove(e.filename2)
        if isinstance(e.filename, str) and os.path.isfile(e.filename):
            size = f", {human(os.path.getsize(e.filename))} to write"
    where = f"{REASONS[e.errno]} writing {target} ({what}{size})" if target else f"{REASONS[e.errno]} writing {what}"
    if e.errno == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            return (f"{where}: this process may write files of at most {human(limit)} (`ulimit -f`)",
                    "raise the limit and type the same command again")
        return f"{where}: bigger than the file system on {mount_of(target or '.')} takes", "write it elsewhere"
    if not target:
        return where, AGAIN
    mount = mount_of(target)
    quota = " (your quota is lower)" if e.errno == errno.EDQUOT else ""
    return f"{where}: {human(shutil.disk_usage(mount).free)} free on {mount}{quota}", AGAIN


def describe_store() -> tuple[str, str]:
    """What failed and what to do, for a tracking store that could not be written for room."""
    db = store_path()
    if db is None:
        return f"the tracking store answered '{STORE_FULL}'", "free space on its disk and type the same command again"
    mount = mount_of(db)
    return f"{NO_SPACE} writing the tracking store {db}: {human(shutil.disk_usage(mount).free)} free on {mount}", AGAIN


def is_line(text: str) -> bool:
    """Whether an error's text is such a line (a step process sends its error as text)."""
    return text.startswith(
        (*REASONS.values(), f"{NO_SPACE} writing the tracking store", "the tracking store answered")
    )


@contextmanager
def writing(what: str, where: str = "") -> Iterator[None]:
    """Names what the block writes ("report figures") and where (a folder: for a write() that names no
    file) for the line a full disk gives; raises DiskFull."""
    try:
        yield
    except OSError as e:
        if not is_full(e):
            raise
        head, remedy = describe(e, what, where)
        raise DiskFull(head, remedy) from e


UNENDED: list[str] = []   # runs this process could not mark ended: the line names them (could_not_end)


def could_not_end(run_id: str) -> None:
    """A run whose end could not be written (a full store): explain() tries it again, else names it."""
    UNENDED.append(run_id)


def _end_runs(run_ids: list[str]) -> list[str]:
    """Mark FAILED those of the runs still RUNNING; the ids that could not be marked."""
    from mlflow.tracking import MlflowClient

    client, left = MlflowClient(), []
    for run_id in dict.fromkeys(run_ids):
        try:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, "FAILED")
        except Exception:  # noqa: BLE001 - the store is full too: said in the line
            left.append(run_id)
    return left


def explain(exc: BaseException, what: str, run_ids: list[str] = ()) -> str | None:
    """The one line for an error that a full disk caused (None for any other error). The runs this
    command started (`run_ids`) that MLflow could not mark FAILED are marked now that the partial file
    is gone; any that still cannot be are named in the line."""
    chain = list(_chain(exc))
    said = next((e for e in chain if isinstance(e, DiskFull)), None)
    full = next((e for e in chain if is_full(e)), None)
    store_full = any(is_store_full(e) for e in chain)
    if said is not None:
        head, remedy = said.head, said.remedy
    elif full is not None:
        head, remedy = describe(full, what)
    elif store_full:
        head, remedy = describe_store()
    else:
        return None
    left = _end_runs([*run_ids, *UNENDED, *(_last_run() if store_full else [])])
    if left:
        head += (f"; the tracking store could not mark run(s) {', '.join(left)} FAILED either: they stay RUNNING "
                 "until the next command finds their process gone")
    return f"{head}; {remedy}"


def _last_run() -> list[str]:
    """The run MLflow's fluent API ended last (its end may be what failed)."""
    import mlflow

    try:
        last = mlflow.last_active_run()
    except Exception:  # noqa: BLE001 - nothing to add to the line
        return []
    return [last.info.run_id] if last else []
