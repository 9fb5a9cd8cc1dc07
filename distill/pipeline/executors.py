"""`main -P executor=ray`: the grid's independent steps at once, as Ray tasks.

The same steps as the sequential executor (distill/pipeline/__init__.py), from the same plan
(distill/pipeline/planner.py), as a graph: the teachers side by side after the translation, the teachers' own
evaluations and the 4-shot baselines at once, every SFT cell after `select`, each evaluation as soon as its
student exists, the judge after its evaluation, `report` last. Each task asks Ray for the GPUs of its step
(`Step.gpus`: the tensor-parallel size for a vLLM step, one for SFT or transformers generation where the
preset needs a GPU, none otherwise); Ray places a task on one node and sets its CUDA_VISIBLE_DEVICES, so a
step that needs more GPUs than the largest node has is refused before the grid starts. A task that held a
GPU runs in a worker that exits afterwards; a task without one sees no GPU, as in the sequential executor.

Semantics are the sequential executor's: every step a run nested under the `main` run (the same params,
tags and heartbeat: distill.pipeline.main_run), finished steps reused, a failed step named with its run id while the
steps that do not depend on it finish, and a rerun continues. Tasks reach the tracking store through
distill.pipeline.task_tracking and read what they need only through it, never from a path another task wrote
(`DISTILL_TASK_SCRATCH` proves it: see execute_step).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from distill import DistillError
from distill.config.environment import OFFLINE_ENV
from distill.phases.contract import phase as phase_of
from distill.pipeline import main_run, planner, retry_hint, step_time
from distill.pipeline.task_tracking import LoopbackServer, stop_process_group, tracking_for_tasks  # noqa: F401 - re-exported
from distill.tracking import phase_runs
from distill.tracking.redact import redact_uri

console = logging.getLogger(__name__)

EXECUTORS = ("sequential", "ray")
SCRATCH_ENV = "DISTILL_TASK_SCRATCH"
# How a task signs in to a team's tracking server (README, "A team's set-up"): passed as the task's environment
# only, never as a param or a tag.
CREDENTIALS_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                   "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH",
                   "MLFLOW_TRACKING_CLIENT_CERT_PATH")
# Passed to every task (a local Ray's workers inherit the rest of the environment; a cluster's nodes have their own).
PASSED_ENV = (*OFFLINE_ENV, "HF_HOME", "DISTILL_HOME", SCRATCH_ENV,
              "TOKENIZERS_PARALLELISM", "OPENAI_BASE_URL", *CREDENTIALS_ENV)
PARENT_ENV = "DISTILL_PARENT_RUN_ID"  # the main run, which each task's phase run nests under


def _own_scratch(root: str) -> str:
    """DISTILL_TASK_SCRATCH: this task works in an empty folder of its own (working directory, TMPDIR,
    DISTILL_HOME, HF_HOME), as on nodes that share no disk: whatever it reads must come through the
    tracking server. (Libraries that fixed a cache path when a kept worker first imported them keep it.)"""
    folder = tempfile.mkdtemp(prefix="task-", dir=root)
    for var, sub in (("TMPDIR", "tmp"), ("DISTILL_HOME", "distill-home"), ("HF_HOME", "hf-home")):
        os.makedirs(os.path.join(folder, sub))
        os.environ[var] = os.path.join(folder, sub)
    tempfile.tempdir = None  # recomputed from TMPDIR
    os.chdir(folder)
    return folder


def execute_step(phase: str, params: Any, env: dict[str, str], gpus: int = 0) -> dict:
    """Runs in a Ray worker: one phase under the main run; returns what happened, errors included."""
    os.environ.update(env)
    os.environ.pop("MLFLOW_RUN_ID", None)  # under `mlflow run` that is the main run: never log into it
    if not gpus:  # Ray sets CUDA_VISIBLE_DEVICES only for a task that asked for GPUs: this one sees none
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    scratch = _own_scratch(env[SCRATCH_ENV]) if env.get(SCRATCH_ENV) else None
    from distill.log import quiet_loggers

    quiet_loggers()  # per worker process, as in a step process
    phase_runs.PARENT_RUN_ID = env.get(PARENT_ENV)  # the phase run nests under `main`
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    from distill.config.environment import apply_offline_env
    from distill.config.presets import load_preset

    apply_offline_env(load_preset(params.preset))
    fn = phase_of(phase).code.run
    events: list[phase_runs.PhaseRun] = []
    t0 = time.perf_counter()
    try:
        with phase_runs.on_phase_run(events.append):
            run_id = fn(params)
        error, refused = None, False
    except BaseException as e:  # noqa: BLE001 - reported to the driver, which names the step
        refused = isinstance(e, DistillError)  # a refusal: the same command fails the same way
        run_id, error = None, (str(e) if refused else f"{type(e).__name__}: {e}")
    import ray

    return {"run_id": run_id if error is None else (events[-1].run_id if events else None),
            "reused": bool(error is None and events and events[-1].reused), "error": error, "refused": refused,
            "seconds": round(time.perf_counter() - t0, 2), "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "scratch": scratch}


def execute_step_in_fresh_worker(phase: str, params: Any, env: dict[str, str], gpus: int = 0) -> dict:
    """execute_step in a worker that exits afterwards (max_calls=1): the GPU memory it held is freed."""
    return execute_step(phase, params, env, gpus)


def _start_ray(address: str):
    try:
        import ray
    except ImportError:
        raise DistillError("executor=ray needs Ray: pip install -e '.[ray]'") from None
    if ray.is_initialized():
        return ray, False
    options = {"address": address} if address else {"include_dashboard": False}  # no address: RAY_ADDRESS, else local
    for attempt in (1, 2):  # a local Ray's first start can time out on a loaded machine
        try:
            ray.init(log_to_driver=False, **options)
            return ray, True
        except Exception as e:  # noqa: BLE001
            ray.shutdown()
            if attempt == 2:
                where = redact_uri(address or os.environ.get("RAY_ADDRESS") or "") or "a local Ray"
                raise DistillError(f"executor=ray could not start or join {where}: {type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''}") from None
    raise AssertionError("unreachable")


def node_gpus(ray) -> list[int]:
    """The GPUs of each alive node of the cluster, largest first."""
    return sorted((int(n.get("Resources", {}).get("GPU", 0)) for n in ray.nodes() if n.get("Alive")), reverse=True)


def check_placement(steps: list[planner.Step], nodes: list[int]) -> None:
    """Refuse a step that needs more GPUs than the largest node has: a Ray task runs on one node (and vLLM's
    tensor parallelism needs its GPUs there), so it would wait forever for a node that never comes."""
    need = max((s.gpus for s in steps), default=0)
    if need > max(nodes, default=0):
        worst = next(s for s in steps if s.gpus == need)
        sizes = ", ".join(map(str, nodes)) or "none"
        raise DistillError(f"step {worst.name} needs {need} GPUs on one node and the Ray cluster's nodes have "
                           f"{sizes} GPUs ({sum(nodes)} in all); add a node with {need} GPUs or narrow the grid")


def task_options(step: planner.Step) -> dict:
    return {"num_gpus": step.gpus, "num_cpus": 1, "name": step.name}


def remote_functions(ray) -> dict[bool, Any]:
    """The Ray functions steps run as: False for a step without a GPU, True for one with (a fresh worker)."""
    return {False: ray.remote(execute_step), True: ray.remote(max_calls=1)(execute_step_in_fresh_worker)}


def submit(remote: dict[bool, Any], step: planner.Step, params: Any, env: dict[str, str]):
    """Start one step as a Ray task; its ObjectRef."""
    return remote[step.gpus > 0].options(**task_options(step)).remote(step.phase, params, env, step.gpus)


def run_concurrent(p, grid: planner.Grid, steps: list[planner.Step]) -> str:
    if p.executor not in EXECUTORS:
        raise DistillError(f"unknown executor {p.executor!r}; choose one of {', '.join(EXECUTORS)}")
    if p.rehearsal:
        raise DistillError("rehearsal=true runs with executor=sequential only")
    import mlflow

    address = p.ray_address or os.environ.get("RAY_ADDRESS", "")
    store = mlflow.get_tracking_uri()
    with tracking_for_tasks(store, address) as server:
        ray, started_ray = _start_ray(p.ray_address)
        try:
            nodes = node_gpus(ray)
            check_placement(steps, nodes)
            if isinstance(server, LoopbackServer) and len(nodes) > 1:
                raise DistillError(f"executor=ray on a Ray cluster of {len(nodes)} nodes needs a tracking server "
                                   "every node reaches (MLFLOW_TRACKING_URI=http://...); the local store "
                                   f"{redact_uri(store)} is served only on this machine")
            task_uri = server.wait()
            mlflow.set_tracking_uri(task_uri)  # the main run, too, goes through the server
            remote = remote_functions(ray)
            return run_steps(steps, p, grid, lambda step, params, env: submit(remote, step, params, env),
                             _ray_result(ray), task_uri, len(nodes))
        finally:
            mlflow.set_tracking_uri(store)
            if started_ray:
                ray.shutdown()


def walk(steps: list[planner.Step], launch: Callable[[planner.Step, Any], Any],
         next_result: Callable[[list], tuple[Any, dict]], t0: float,
         estimates: dict | None = None) -> tuple[dict, dict, dict]:
    """Launch every step whose inputs are done (`launch(step, filled params)` -> a handle), take results as
    they come (`next_result(handles)` -> (handle, result)); a step that needs a failed one is skipped; a step
    that ran logs its time on its run (step_time, beside `estimates[name]`).
    Returns the results of the done, the failed, and the skipped steps (-> the step it waited on)."""
    by_name = {s.name: s for s in steps}
    done: dict[str, dict] = {}
    failed: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    running: dict[Any, str] = {}
    pending = list(steps)
    while pending or running:
        for step in list(pending):
            blocked = [d for d in step.needs if d in failed or d in skipped]
            if blocked:
                skipped[step.name] = blocked[0]
                pending.remove(step)
            elif all(d in done for d in step.needs):
                running[launch(step, step.filled({d: r["run_id"] for d, r in done.items()}))] = step.name
                pending.remove(step)
        if not running:
            break
        handle, result = next_result(list(running))
        name = running.pop(handle)
        result["finished_at"] = round(time.perf_counter() - t0, 2)
        if result["error"]:
            failed[name] = result
            where = f" (run {result['run_id']})" if result["run_id"] else ""
            console.error(f"main: {name}: FAILED{where}: {result['error']}")
        else:
            done[name] = result
            if not result["reused"]:
                step_time.log_step_time(result["run_id"], result["seconds"], by_name[name].gpus,
                                        (estimates or {}).get(name))
            console.info(f"main: {name}: {'reused' if result['reused'] else 'ran'} {result['run_id']} "
                         f"({result['seconds']:.1f}s)")
    return done, failed, skipped


def _ray_result(ray):
    def next_result(refs: list) -> tuple[Any, dict]:
        ready, _ = ray.wait(refs, num_returns=1)
        try:
            return ready[0], ray.get(ready[0])
        except Exception as e:  # noqa: BLE001 - the worker died (killed, out of memory): name the step
            return ready[0], {"run_id": None, "reused": False, "error": f"the Ray task died ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})", "seconds": None}
    return next_result


def _warn_unshared_artifacts(n_nodes: int) -> None:
    """Artifacts on a path of the server's own disk: each node writes its own copy, others cannot read it."""
    import mlflow

    uri = mlflow.get_artifact_uri()
    if n_nodes > 1 and (uri.startswith("file:") or uri.startswith("/")):
        console.warning(f"main: artifacts go to {redact_uri(uri)}, a path on each node's own disk: "
                        "unless every node shares it, steps cannot read each other's results; serve them through "
                        "the tracking server (mlflow server --artifacts-destination ...)")


def run_steps(steps: list[planner.Step], p, grid: planner.Grid, launch: Callable[[planner.Step, Any, dict], Any],
              next_result: Callable[[list], tuple[Any, dict]], task_uri: str, n_nodes: int) -> str:
    """The Ray driver under its main run: `launch(step, params, env)` starts a task (submit), `next_result`
    waits for one (see walk); the failed steps are named once every other step has finished."""
    t0 = time.perf_counter()
    with main_run.main_run(p, grid) as main:
        _warn_unshared_artifacts(n_nodes)
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env |= {"MLFLOW_TRACKING_URI": task_uri, "MLFLOW_EXPERIMENT_ID": main.experiment_id, PARENT_ENV: main.run_id}
        done, failed, skipped = walk(steps, lambda step, params: launch(step, params, env), next_result, t0,
                                     step_time.estimates_for(p, grid, steps))
        log = [{"step": s.name, "run_id": done[s.name]["run_id"], "reused": done[s.name]["reused"],
                "seconds": done[s.name]["seconds"], "finished_at": done[s.name]["finished_at"], "gpus": s.gpus}
               for s in steps if s.name in done]
        seconds = time.perf_counter() - t0
        main_run.record(main, log, seconds, failed=[{"step": n, **r} for n, r in failed.items()],
                        skipped=[{"step": n, "needs": d} for n, d in skipped.items()])
        if failed:
            what = "; ".join(f"step {n} failed" + (f" (run {r['run_id']})" if r["run_id"] else "") + f": {r['error']}"
                             for n, r in failed.items())
            refused = all(r.get("refused") for r in failed.values())  # each would fail the same way again
            raise DistillError(f"{what}; {len(done)} other steps finished, {len(skipped)} waited on the failed ones; "
                               f"{retry_hint.after_failure(refused)}")
        report_run = done["report"]["run_id"]
        main_run.describe(main, grid.preset.name, log, report_run)
        reused = sum(s["reused"] for s in log)
        console.info(f"main: {len(log)} steps as Ray tasks, {reused} reused, {seconds:.0f}s; report run "
                     f"{report_run}")
        return main.run_id
