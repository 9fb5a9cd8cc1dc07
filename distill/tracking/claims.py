"""Who holds a cache key: the finished run to reuse, the live try to wait for, the dead tries to take over.

A run working on a cache key carries lineage.CLAIMED_AT (when it claimed the key) and
lineage.HEARTBEAT, renewed by a daemon thread every DISTILL_HEARTBEAT_S seconds. A RUNNING run whose
heartbeat is older than DISTILL_HEARTBEAT_TIMEOUT_S is dead (kill -9, a lost machine): the next try
marks it KILLED and takes over its shards or checkpoints. A second try of live work waits for it and
reuses its result. Two tries that claim at the same moment both see each other after a short settle
time (claim_settle_time: as long as the claim took to land) and the earlier claim wins; this assumes
the clocks of the machines agree to within that time.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from distill.tracking import lineage

console = logging.getLogger(__name__)


def _complete(run) -> bool:
    return run.info.status == "FINISHED" and run.data.tags.get(lineage.INCOMPLETE) != "true"


def find_reusable(key: str) -> str | None:
    """A FINISHED run of the same work that left nothing undone (see lineage.INCOMPLETE)."""
    runs = lineage.runs_with_key(key, status="FINISHED", max_results=20)
    return next((r.info.run_id for r in runs if _complete(r)), None)


def find_same_work(work: str, files: dict[str, str]) -> tuple[str, list[str]] | None:
    """A FINISHED, complete run of the same work (parameters, inputs) done with other code, and the
    files whose content differs (from the per-file hashes every run carries)."""
    runs = lineage.finished_with_work(work, max_results=20)
    for run in runs:
        if not _complete(run):
            continue
        try:
            old = json.loads(run.data.tags.get(lineage.CODE_FILES, ""))
        except ValueError:
            old = {}
        changed = sorted(f for f in set(old) | set(files) if old.get(f) != files.get(f))
        return run.info.run_id, changed or ["(unknown)"]
    return None


def find_unfinished(key: str) -> list:
    """Earlier tries of the same work that did not finish (killed, failed, dead while marked running,
    or finished with some items left undone), whose finished items a new try takes over. A run that is
    still alive (a fresh heartbeat) is not taken over."""
    runs = lineage.runs_with_key(key)
    now = time.time()
    return [r for r in runs if not _complete(r) and not is_live(r, now)]


def _env_seconds(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def heartbeat_interval() -> float:
    return _env_seconds("DISTILL_HEARTBEAT_S", 15.0)


def heartbeat_timeout() -> float:
    return _env_seconds("DISTILL_HEARTBEAT_TIMEOUT_S", 4 * heartbeat_interval())


MIN_SETTLE_S = 0.05


def claim_settle_time(claim_seconds: float) -> float:
    """How long a new claim waits before it looks for another claim made at the same moment: as long as
    its own claim took to land in the store (from its timestamp to its run's creation), at least
    MIN_SETTLE_S. Another try's claim, on the same store, lands as fast: one that took up to twice as
    long is still seen. DISTILL_CLAIM_SETTLE_S fixes the time instead."""
    fixed = os.environ.get("DISTILL_CLAIM_SETTLE_S")
    if fixed:
        return float(fixed)
    return max(MIN_SETTLE_S, claim_seconds)


def _last_beat(run) -> float:
    try:
        return float(run.data.tags[lineage.HEARTBEAT])
    except (KeyError, ValueError):
        return run.info.start_time / 1000  # a run from before heartbeats: its start counts


def is_live(run, now: float | None = None) -> bool:
    return run.info.status == "RUNNING" and (now or time.time()) - _last_beat(run) < heartbeat_timeout()


def _claim_order(run) -> tuple[float, str]:
    try:
        return float(run.data.tags[lineage.CLAIMED_AT]), run.info.run_id
    except (KeyError, ValueError):
        return run.info.start_time / 1000, run.info.run_id


def _running_with_key(key: str) -> list:
    return lineage.runs_with_key(key, status="RUNNING")


class Heartbeat:
    """A daemon thread that renews the run's heartbeat tag until stopped."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"distill-heartbeat-{run_id[:8]}", daemon=True)

    def _beat(self) -> None:
        from mlflow.tracking import MlflowClient

        client = None  # made at the first beat: most steps end before it, and making it costs CPU at their start
        while not self._stop.wait(heartbeat_interval()):
            try:
                client = client or MlflowClient()
                client.set_tag(self.run_id, lineage.HEARTBEAT, f"{time.time():.3f}")
            except Exception:  # a short outage of the server: the next beat tries again
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._stop.set()
        if isinstance(exc, KeyboardInterrupt):
            end_stopped(self.run_id, exc)


def end_stopped(run_id: str, interrupt: KeyboardInterrupt) -> None:
    """A run whose process was stopped (^C, SIGTERM: distill.stop_signals) ends KILLED with why, not FAILED as
    MLflow ends a run on any exception: a preempted try is not a failure. The active run through MLflow's run
    stack, so that its context does not end it again; another (`mlflow run`'s) directly."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from distill.stop_signals import how_stopped

    try:
        active = mlflow.active_run()
        client = MlflowClient()
        client.set_tag(run_id, lineage.KILLED_REASON, how_stopped(interrupt))
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run("KILLED")
        else:
            client.set_terminated(run_id, "KILLED")
    except Exception:  # noqa: BLE001 - the store is unreachable: MLflow's own exit still tries, as FAILED
        pass


def wait_for_holders(phase: str, key: str, me: tuple[float, str] | None = None,
                     seen: list | None = None) -> str | None:
    """Wait while a live run holds the key (claimed before `me`, when given); then the id of a FINISHED
    run of the work to reuse, or None when there is none and the work is ours. One search a look: every
    try of the key, whatever its status; `seen` receives those of the last look (for mark_dead)."""
    announced = False
    while True:
        tries = lineage.runs_with_key(key)
        prior = next((r.info.run_id for r in tries if _complete(r)), None)
        if prior:
            return prior
        now = time.time()
        holders = [r for r in tries if is_live(r, now)
                   and (me is None or (r.info.run_id != me[1] and _claim_order(r) < me))]
        if not holders:
            if seen is not None:
                seen[:] = tries
            return None
        if not announced:
            console.info(f"{phase}: waiting for RUNNING run {holders[0].info.run_id} (same work, heartbeat "
                         f"{now - _last_beat(holders[0]):.0f}s ago)")
            announced = True
        time.sleep(min(heartbeat_interval(), 5.0))


def mark_dead(key: str, me: str, tries: list | None = None) -> list[str]:
    """RUNNING tries of the key whose heartbeat stopped: KILLED, with the reason and who took over.
    `tries`: the key's runs as a look just now found them (wait_for_holders), else they are searched."""
    from mlflow.tracking import MlflowClient

    client, now, dead = MlflowClient(), time.time(), []
    for r in _running_with_key(key) if tries is None else tries:
        if r.info.status == "RUNNING" and r.info.run_id != me and not is_live(r, now):
            client.set_tag(r.info.run_id, lineage.KILLED_REASON, f"no heartbeat for {now - _last_beat(r):.0f}s; "
                                                                 f"taken over by run {me}")
            client.set_terminated(r.info.run_id, "KILLED")
            dead.append(r.info.run_id)
    if dead:
        console.warning(f"marked {', '.join(dead)} KILLED (no heartbeat); run {me} takes over")
    return dead
