"""Each model-loading step of `main` in a fresh child process that exits when the step ends.

A vLLM engine (the 70B translator at tensor parallel 4, then each teacher) does not give its GPU
memory back reliably inside a process; a process that exits does. So `main` runs every step that
loads a model or tokenizer (translate, teacher, evaluate, sft, tokens) in a child of its own and never
loads one itself. Children are forked from a fork server started once per `main`, as soon as the
environment is set and before `main` imports MLflow itself, that has already imported torch,
transformers, TRL and MLflow, set up the SQLite tracking store and closed its connections (and touched
no GPU): a step starts in milliseconds, not the seconds of a fresh interpreter or the `mlflow` CLI's ~5 s.
`DISTILL_STEP_START_METHOD=spawn` starts each step in a fresh interpreter instead.

The child's phase run nests under the main run (phase_runs.PARENT_RUN_ID), and every run it starts or
reuses is reported back as it happens (phase_runs.on_phase_run there, phase_runs.notify_phase_run here), so
`main` names the run of a step that failed or died.
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib
import logging
import multiprocessing
import os
import signal
import sys
from contextlib import contextmanager, nullcontext

from distill import DistillError
from distill.log import setup_logging
from distill.stop_signals import Terminated
from distill.tracking import cache_keys, phase_runs

console = logging.getLogger(__name__)


class StepError(Exception):
    """A step that failed in its process with something other than a DistillError; str() is the detail."""


def start_method() -> str:
    method = os.environ.get("DISTILL_STEP_START_METHOD", "forkserver")
    if method not in multiprocessing.get_all_start_methods():
        raise DistillError(f"DISTILL_STEP_START_METHOD={method!r} is not available here; "
                           f"use one of {', '.join(multiprocessing.get_all_start_methods())}")
    return method


PRELOAD = ["distill.pipeline.fork_server"]
INTERRUPT_GRACE_S = 60  # after a ^C or SIGTERM (stop_signals), how long a step may take to end its run
# Set once a step found itself forked from a process that had initialised CUDA (in_bad_fork): every later step of
# this process starts with spawn, a fresh interpreter, instead of from that fork server.
SPAWN_STEPS = False


def start_server_early() -> None:
    """Start the fork server now, before this process imports MLflow and sets up the tracking store:
    its ~10 s of imports then run beside that start-up on another core instead of delaying the first
    step. The environment must be final (cli.run_phase calls this after the offline variables are set).
    A `main` that ends before its first step (bad input, every step reused) kills it at exit."""
    if start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()
    atexit.register(stop_server)


def stop_server() -> None:
    """End this process's fork server, if one runs. Every step process has ended by now, so it is killed
    rather than asked to stop: asked, it would first finish its imports (up to ~10 s when no step used it).
    Not while it sets up a brand-new SQLite store (distill.tracking.store.warm_tracking_store): that waits."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None:
        return
    import mlflow

    from distill.tracking.store import setup_lock

    uri = mlflow.get_tracking_uri()
    with setup_lock(uri) if uri.startswith("sqlite:///") else nullcontext():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    stop = getattr(server, "_stop", None)
    if stop:  # closes its pipe, reaps it, removes its socket
        stop()


@contextmanager
def step_server():
    """The context step processes start from. The fork server is the one started early for this `main`
    (start_server_early), else it starts with the first step that needs a process (a `main` that
    reuses every step starts none); it lives as long as this `main`: it keeps the environment it started
    with, so a later `main` in the same interpreter gets its own."""
    method = start_method()
    ctx = multiprocessing.get_context(method)
    if method != "forkserver":
        yield ctx
        return
    ctx.set_forkserver_preload(PRELOAD)
    try:
        yield ctx
    finally:
        stop_server()


def die_with(pid: int) -> None:
    """Kill this process, and its process group when it leads one (own_process_group), when process `pid` ends.
    A step's parent is the fork server, not the `main` (or entry point) that waits for it: killed with `kill
    -9`, that one leaves no one to end the step, which would train or generate on (holding its GPU) while the
    next try waits for its heartbeat; nor would anyone end what the step started (vLLM's EngineCore, a
    non-daemon process that does not watch its parent, and its workers, which watch only it). Dying at once
    leaves its run RUNNING with a heartbeat that stops, which the next try marks KILLED and takes over."""
    import threading

    try:
        fd = os.pidfd_open(pid)  # Linux: readable once `pid` has ended, never confused with a reused pid
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)
        return
    except (AttributeError, OSError):  # no pidfd here: ask every second
        fd = None

    def watch() -> None:
        import select
        import time

        if fd is not None:
            select.select([fd], [], [])
        else:
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(1)
        kill_own_group()
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="distill-die-with-parent", daemon=True).start()


def own_process_group() -> None:
    """Make this step process the leader of a process group of its own: everything it starts (vLLM's engine
    processes, DataLoader workers, a compile worker pool) joins it unless it leaves on purpose, so the step is
    ended as one (kill_group). The terminal's ^C then no longer reaches the step directly: the process that
    waits for it passes it on (run_in_process)."""
    try:
        os.setpgid(0, 0)
    except OSError:  # already a session or group leader (spawned by a process manager): its group is its own
        pass


def kill_own_group() -> None:
    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to a finished or running step's process group: a step's leftovers (an engine process its
    shutdown missed) go with it. The group's id stays its leader's pid until its last member is gone, and
    Linux gives no new process a pid that is still some group's id, so this reaches no stranger."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def in_bad_fork() -> bool:
    """Whether this process was forked from one that had initialised CUDA (torch's own flag, set in the child of
    such a fork): its first CUDA call would fail with "Cannot re-initialize CUDA in forked subprocess". Asked only
    where torch is imported already: a parent without torch made no CUDA context of torch's."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda._is_in_bad_fork())
    except Exception:  # noqa: BLE001 - a torch without the flag: taken as a good fork
        return False


def _child(module: str, params, parent_run_id: str, experiment_id: str, tracking_uri: str, env: dict, cwd: str,
           rehearsal: bool, fresh_inputs: bool, conn, waiter: int) -> None:
    if in_bad_fork():  # before anything is done: the waiter starts this step again, spawned (run_in_process)
        conn.send(("respawn",))
        conn.close()
        return
    own_process_group()
    die_with(waiter)
    from distill.stop_signals import stop_like_ctrl_c

    stop_like_ctrl_c(repeat_sigint=False)  # the fork server ignores ^C; a step must not, nor a scheduler's SIGTERM
    os.chdir(cwd)  # the fork server's is the parent's when it started; a relative sqlite:///mlflow.db needs this one
    os.environ.clear()
    os.environ.update(env)  # CUDA_VISIBLE_DEVICES first of all: the fork server made no CUDA context (fork_server)
    os.environ.pop("MLFLOW_RUN_ID", None)  # `mlflow run`'s main run: a phase would take it for its own
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    from distill.log import quiet_loggers

    quiet_loggers()  # per process: logger levels are not inherited from the parent
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    phase_runs.PARENT_RUN_ID, cache_keys.REHEARSAL, phase_runs.FRESH_INPUTS = parent_run_id, rehearsal, fresh_inputs
    setup_logging()  # this step's environment (verbosity, rank) sets its level; lines go to its stderr
    try:
        # every run started or reused goes to the parent at once: a step that dies is named with its run
        with phase_runs.on_phase_run(lambda pr: conn.send(("event", dataclasses.asdict(pr)))):
            result = importlib.import_module(module).run(params)
        conn.send(("done", result))
    except DistillError as e:
        conn.send(("error", True, str(e)))
    except KeyboardInterrupt:
        conn.send(("interrupted",))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which names the step
        from distill.disk_full import explain

        full = explain(e, f"{module.rsplit('.', 1)[-1]} output") if isinstance(e, Exception) else None
        conn.send(("error", True, full) if full else ("error", False, f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def run_in_process(ctx, module: str, params, parent_run_id: str, fresh_inputs: bool = False,
                   cuda_visible_devices: str | None = None) -> str:
    """`module.run(params)` in a fresh process nested under the main run; its run id, or the step's
    error raised here (DistillError as it was, anything else as StepError). `fresh_inputs`: see
    phase_runs.FRESH_INPUTS. `cuda_visible_devices`: the GPUs the process sees (distill.pipeline.gpus; "" none),
    set in its environment before anything in it can initialise CUDA; None: this process's."""
    import mlflow

    if SPAWN_STEPS:
        ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    experiment_id = mlflow.get_run(parent_run_id).info.experiment_id
    env = dict(os.environ)
    if cuda_visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices
    proc = ctx.Process(target=_child, name=f"distill-{module.rsplit('.', 1)[-1]}",
                       args=(module, params, parent_run_id, experiment_id, mlflow.get_tracking_uri(),
                             env, os.getcwd(), cache_keys.REHEARSAL, fresh_inputs, send, os.getpid()))
    sys.stdout.flush()
    sys.stderr.flush()
    proc.start()
    send.close()
    outcome = None
    try:
        while True:
            try:
                message = recv.recv()
            except EOFError:
                break
            if message[0] == "event":
                phase_runs.notify_phase_run(phase_runs.PhaseRun(**message[1]))
            else:
                outcome = message
        proc.join()
    except KeyboardInterrupt as stop:
        # ^C or SIGTERM (distill.stop_signals). The step leads its own group: pass the stop on as it came, and let
        # the step end its run and exit.
        kill_group(proc.pid, signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
        proc.join(INTERRUPT_GRACE_S)
        if proc.is_alive():  # stuck: a step takes a second stop signal for the same stop, so it is killed
            kill_group(proc.pid)
            proc.join()
        raise
    finally:
        recv.close()
        if proc.pid is not None:
            kill_group(proc.pid)  # what the step left running (it has ended, or this process is unwinding)
    if outcome is not None and outcome[0] == "respawn":
        return _respawn(ctx, module, params, parent_run_id, fresh_inputs, cuda_visible_devices)
    if outcome is None:
        code = proc.exitcode
        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        raise StepError(f"its process ended ({why}) before the step finished")
    if outcome[0] == "done":
        return outcome[1]
    if outcome[0] == "interrupted":
        raise KeyboardInterrupt
    _, is_distill, detail = outcome
    raise DistillError(detail) if is_distill else StepError(detail)


def _respawn(ctx, module: str, params, parent_run_id: str, fresh_inputs: bool,
             cuda_visible_devices: str | None) -> str:
    """The step again, and every later one, with spawn: its process was forked from a fork server whose preloading
    initialised CUDA, so no forked step could use a GPU. Said once; a spawned process that reports it is an error,
    not a loop."""
    global SPAWN_STEPS

    if ctx.get_start_method() == "spawn":
        raise StepError("a spawned step process found a CUDA context inherited through a fork")
    if not SPAWN_STEPS:
        SPAWN_STEPS = True
        console.warning("warning: CUDA was initialised while preloading the step processes; steps start with spawn "
                        "from now on")
    return run_in_process(ctx, module, params, parent_run_id, fresh_inputs=fresh_inputs,  # spawned: SPAWN_STEPS
                          cuda_visible_devices=cuda_visible_devices)
