"""Who holds a cache key: the finished run to reuse, the live try to wait for, the dead tries to take over.

A run working on a cache key carries lineage.CLAIMED_AT (when it claimed the key) and
lineage.HEARTBEAT, renewed by a daemon thread every DISTILL_HEARTBEAT_S seconds. A RUNNING run whose
heartbeat is older than DISTILL_HEARTBEAT_TIMEOUT_S is dead (kill -9, a lost machine): the next try
marks it KILLED and takes over its shards or checkpoints. A second try of live work waits for it and
reuses its result. Two tries that claim at the same moment both see each other after a short settle
time (claim_wait_time: as long as the claim took to land) and the earlier claim wins; this assumes
the clocks of the machines agree to within that time.

A try also records where it runs (whereabouts: host, boot id, pid namespace, pid and the process's start time).
A later try on the same machine need not wait for the heartbeat to age: a try whose process is gone, or whose pid
now belongs to a process started at another time, is dead at once (process_gone). Across machines, or where
/proc is missing, the heartbeat rule stays.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
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


MIN_WAIT_S = 0.05


def claim_wait_time(claim_seconds: float) -> float:
    """How long a new claim waits before it looks for another claim made at the same moment: as long as
    its own claim took to land in the store (from its timestamp to its run's creation), at least
    MIN_WAIT_S. Another try's claim, on the same store, lands as fast: one that took up to twice as
    long is still seen. DISTILL_CLAIM_SETTLE_S fixes the time instead."""
    fixed = os.environ.get("DISTILL_CLAIM_SETTLE_S")
    if fixed:
        return float(fixed)
    return max(MIN_WAIT_S, claim_seconds)


def _last_beat(run) -> float:
    try:
        return float(run.data.tags[lineage.HEARTBEAT])
    except (KeyError, ValueError):
        return run.info.start_time / 1000  # a run from before heartbeats: its start counts


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat); "" if there is none,
    or it has ended and only waits to be reaped (a zombie). The fields are counted after the command name's
    closing parenthesis: the name may hold spaces."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 and fields[0] not in ("Z", "X") else ""


@functools.cache
def _machine() -> dict[str, str]:
    """This machine as whereabouts name it; {} where it cannot be told (no /proc: not Linux)."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    if not boot or not namespace:
        return {}
    return {lineage.HOST: socket.gethostname(), lineage.BOOT_ID: boot, lineage.PID_NAMESPACE: namespace}


def whereabouts() -> dict[str, str]:
    """The tags that say where this process runs, for a run it holds; {} where process_gone could not use them."""
    machine = _machine()
    start = _process_start(os.getpid()) if machine else ""
    return {**machine, lineage.PID: str(os.getpid()), lineage.PID_START: start} if start else {}


def process_gone(run) -> bool:
    """Whether the run's process (whereabouts) ran on this machine, since its last boot, and has ended: its pid
    is free, or taken by a process that started at another time. False where that cannot be told."""
    tags, machine = run.data.tags, _machine()
    if not machine or any(tags.get(k) != v for k, v in machine.items()):
        return False
    try:
        pid = int(tags[lineage.PID])
    except (KeyError, ValueError):
        return False
    return _process_start(pid) != tags.get(lineage.PID_START)


def is_live(run, now: float | None = None) -> bool:
    """RUNNING, beating, and not known dead on this machine."""
    return (run.info.status == "RUNNING" and (now or time.time()) - _last_beat(run) < heartbeat_timeout()
            and not process_gone(run))


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
    """RUNNING tries of the key that are dead (heartbeat stopped, or process gone): KILLED, with the reason
    and who took over. `tries`: the key's runs as a look just now found them (wait_for_holders), else they
    are searched."""
    return _kill(_running_with_key(key) if tries is None else tries, me, f"taken over by run {me}")


def mark_dead_in(experiment_ids: list[str], me: str) -> list[str]:
    """Every dead try in these experiments, whatever its work: a `main` killed with its machine leaves its own
    run, `mlflow run`'s and a step's, and a rerun need not reach the step's work (another grid, a step
    reused elsewhere) to end them. Only runs that beat (lineage.HEARTBEAT) are judged."""
    runs = lineage.search_phase_runs(status="RUNNING", experiment_ids=experiment_ids)
    return _kill([r for r in runs if lineage.HEARTBEAT in r.data.tags], me, f"found dead by run {me}")


def _kill(tries: list, me: str, note: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    client, now, dead, why = MlflowClient(), time.time(), [], set()
    for r in tries:
        if r.info.status == "RUNNING" and r.info.run_id != me and not is_live(r, now):
            gone = process_gone(r)
            reason = f"its process {r.data.tags[lineage.PID]} on this machine is gone" if gone else \
                f"no heartbeat for {now - _last_beat(r):.0f}s"
            client.set_tag(r.info.run_id, lineage.KILLED_REASON, f"{reason}; {note}")
            client.set_terminated(r.info.run_id, "KILLED")
            dead.append(r.info.run_id)
            why.add("its process is gone" if gone else "no heartbeat")
    if dead:
        console.warning(f"marked {', '.join(dead)} KILLED ({', '.join(sorted(why))}); {note}")
    return dead
