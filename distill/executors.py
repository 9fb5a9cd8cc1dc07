"""`main -P executor=ray`: the grid's independent steps at once, as Ray tasks.

The same steps as the sequential executor (distill/phases/main.py), as a graph: the teachers side by
side after the translation, the teachers' own evaluations and the 4-shot baselines at once, every
SFT cell after `select`, each evaluation as soon as its student exists, the judge after its
evaluation, `report` last. Each task asks Ray for what its step needs, from the preset: the
tensor-parallel size in GPUs for a vLLM step, one GPU for SFT or transformers generation where the
preset needs a GPU, none otherwise. A task that held a GPU runs in a worker that exits afterwards.

Semantics are the sequential executor's: every step a run nested under the `main` run, finished
steps reused, a failed step named with its run id while the steps that do not depend on it finish,
and a rerun continues. Tasks write to the tracking store concurrently, which a local file or SQLite
store is not made for: with such a store, `main` serves it with an `mlflow server` on loopback for
the tasks and stops it afterwards; an http(s) tracking URI is used as it is.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distill import DistillError
from distill.config import OFFLINE_ENV
from distill.phases import module_name
from distill import lineage, tracking

console = logging.getLogger(__name__)

EXECUTORS = ("sequential", "ray")
# Passed to every task (a local Ray's workers inherit the rest of the environment; a cluster's nodes have their own).
PASSED_ENV = (*OFFLINE_ENV, "HF_HOME", "DISTILL_HOME",
              "TOKENIZERS_PARALLELISM", "OPENAI_BASE_URL")
PARENT_ENV = "DISTILL_PARENT_RUN_ID"  # the main run, which each task's phase run nests under


@dataclass
class Step:
    """One node of the graph: a phase, its parameters, and where its upstream run ids come from."""

    name: str
    phase: str                                              # distill module: translate, teacher, evaluate, ...
    params: Any
    inputs: dict[str, list[str]] = field(default_factory=dict)  # params field -> steps whose run ids fill it
    after: list[str] = field(default_factory=list)          # steps that must finish first, ids not needed
    gpus: float = 0

    @property
    def needs(self) -> list[str]:
        return [d for deps in self.inputs.values() for d in deps] + self.after


def gpus_for_generation(preset, backend: str, tensor_parallel_size: int) -> float:
    if backend == "vllm":
        return tensor_parallel_size
    if backend == "transformers" and preset.needs_gpu:
        return 1
    return 0  # openai: the server does the work; transformers on a CPU preset


def plan(p, preset, teachers: list[str], students: list[str], seeds: list[int], backend: str, limit,
         judge: bool) -> list[Step]:
    """The sequential executor's steps, in its order, with their dependencies and resources."""
    from distill.config import resolve_role
    from distill.phases.judge import ErrorsParams
    from distill.phases.evaluate import EvaluateParams
    from distill.phases.report import ReportParams
    from distill.phases.select import SelectParams
    from distill.phases.sft import SftParams
    from distill.phases.teacher import TeacherParams
    from distill.phases.tokens import TokensParams
    from distill.phases.translate import TranslateParams

    common = dict(preset=p.preset, reuse=p.reuse)
    gen = dict(backend=p.backend, max_new_tokens=p.max_new_tokens)
    default_tp = int(preset.tensor_parallel_size or 1)
    tp = {t: resolve_role(t, preset, "teacher").tensor_parallel_size for t in teachers}
    tp |= {s: resolve_role(s, preset, "student").tensor_parallel_size for s in students}
    translator_tp = int(preset.translator.tensor_parallel_size or default_tp)
    gpu = lambda n: gpus_for_generation(preset, backend, n)  # noqa: E731
    sft_gpus = 1 if preset.needs_gpu else 0
    steps = [Step("translate", "translate", TranslateParams(limit=p.train_limit, **gen, **common), gpus=gpu(translator_tp))]
    steps += [Step(f"teacher {t}", "teacher", TeacherParams(teacher=t, translation_run="", **gen, **common),
                   inputs={"translation_run": ["translate"]}, gpus=gpu(tp[t])) for t in teachers]
    steps += [Step(f"evaluate teacher {t}", "evaluate", EvaluateParams(model=t, limit=limit, **gen, **common),
                   gpus=gpu(tp[t])) for t in teachers]
    steps.append(Step("select", "select", SelectParams(teacher_runs="", n=p.n, **common),
                      inputs={"teacher_runs": [f"teacher {t}" for t in teachers]}))
    cells = []
    for t in teachers:
        for s in students:
            for seed in seeds:
                sft = f"sft {t} -> {s} (seed {seed})"
                ev = f"evaluate {s} <- {t} (seed {seed})"
                steps.append(Step(sft, "sft", SftParams(teacher=t, student=s, seed=seed, select_run="", **common),
                                  inputs={"select_run": ["select"]}, gpus=sft_gpus))
                steps.append(Step(ev, "evaluate", EvaluateParams(model="", limit=limit, **gen, **common),
                                  inputs={"model": [sft]}, gpus=gpu(default_tp)))
                cells.append((t, s, seed, ev))
    steps += [Step(f"baseline {s} (4-shot)", "evaluate",
                   EvaluateParams(model=s, mode="few-shot", limit=limit, **gen, **common), gpus=gpu(tp[s]))
              for s in students]
    if judge:
        judged = [t for t in preset.judge.teachers if t in teachers] or teachers
        steps += [Step(f"errors {s} <- {t} (seed {seed})", "errors",
                       ErrorsParams(eval_run="", judge_model=p.judge_model, judge_base_url=p.judge_base_url, **common),
                       inputs={"eval_run": [ev]}) for t, s, seed, ev in cells if t in judged]
    steps.append(Step("tokens", "tokens", TokensParams(select_run="", **common), inputs={"select_run": ["select"]}))
    steps.append(Step("report", "report", ReportParams(preset=p.preset, teachers=",".join(teachers),
                                                       students=",".join(students), seeds=",".join(map(str, seeds)),
                                                       reuse=p.reuse),
                      after=[s.name for s in steps]))
    return steps


def execute_step(phase: str, params: Any, env: dict[str, str]) -> dict:
    """Runs in a Ray worker: one phase under the main run; returns what happened, errors included."""
    os.environ.update(env)
    os.environ.pop("MLFLOW_RUN_ID", None)  # under `mlflow run` that is the main run: never log into it
    from distill.cli import quiet_loggers

    quiet_loggers()  # per worker process, as in a step process
    tracking.PARENT_RUN_ID = env.get(PARENT_ENV)  # the phase run nests under `main`
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    from distill.config import apply_offline_env, load_preset

    apply_offline_env(load_preset(params.preset))
    import importlib

    fn = importlib.import_module(module_name(phase)).run
    events: list[tracking.PhaseRun] = []
    t0 = time.perf_counter()
    try:
        with tracking.on_phase_run(events.append):
            run_id = fn(params)
        error = None
    except BaseException as e:  # noqa: BLE001 - reported to the driver, which names the step
        run_id, error = None, (str(e) if isinstance(e, DistillError) else f"{type(e).__name__}: {e}")
    return {"run_id": run_id if error is None else (events[-1].run_id if events else None),
            "reused": bool(error is None and events and events[-1].reused), "error": error,
            "seconds": round(time.perf_counter() - t0, 2), "pid": os.getpid()}


def execute_step_in_fresh_worker(phase: str, params: Any, env: dict[str, str]) -> dict:
    """execute_step in a worker that exits afterwards (max_calls=1): the GPU memory it held is freed."""
    return execute_step(phase, params, env)


class LoopbackServer:
    """`mlflow server` on 127.0.0.1 over a local store, so that concurrent tasks write through one process."""

    def __init__(self, store_uri: str):
        self.store_uri = store_uri
        self.proc = None
        self.uri = ""

    def __enter__(self) -> "LoopbackServer":
        """Starts the server and returns at once (Ray starts meanwhile); `wait()` gives its URI once it answers."""
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        artifacts = Path("mlruns").resolve()  # where the embedded store puts them: same layout, same paths
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", self.store_uri, "--default-artifact-root", artifacts.as_uri(),
               "--no-serve-artifacts", "--workers", "1"]
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"distill-mlflow-server-{port}.log"
        # its own process group: the server starts uvicorn, a job runner and queue consumers, stopped together
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.uri = f"http://127.0.0.1:{port}"
        return self

    def wait(self) -> str:
        import requests

        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise DistillError(f"could not start an mlflow server over {self.store_uri} for executor=ray: "
                                   f"{self.log.read_text()[-300:].strip()}")
            try:
                if requests.get(self.uri + "/health", timeout=1).ok:
                    console.info(f"main: serving {self.store_uri} at {self.uri} for the Ray tasks")
                    return self.uri
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.__exit__()
        raise DistillError(f"the mlflow server over {self.store_uri} did not answer within 180 s (log: {self.log})")

    def __exit__(self, *exc) -> None:
        if self.proc:
            stop_process_group(self.proc)
            if self.proc.returncode in (0, -15):
                self.log.unlink(missing_ok=True)


def stop_process_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM to the group a `start_new_session=True` child leads, SIGKILL to whatever outlives the grace."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.time() + grace
        while time.time() < deadline:
            try:
                os.killpg(proc.pid, 0)  # anyone left in the group?
            except ProcessLookupError:
                break
            proc.poll()
            time.sleep(0.2)
        else:
            continue
        break
    proc.wait()


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
                where = address or os.environ.get("RAY_ADDRESS") or "a local Ray"
                raise DistillError(f"executor=ray could not start or join {where}: {type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''}") from None
    raise AssertionError("unreachable")


class Served:
    """A tracking URI that many processes may write to as it is."""

    def __init__(self, uri: str):
        self.uri = uri

    def __enter__(self) -> "Served":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def wait(self) -> str:
        return self.uri


def tracking_for_tasks(uri: str, address: str):
    """A context manager whose `wait()` gives the tracking URI the tasks use, for the current one."""
    if uri.startswith(("http://", "https://")):
        return Served(uri)
    if uri.startswith("databricks") or "://" in uri and not uri.startswith(("sqlite:", "file:")):
        return Served(uri)  # a database URL (postgresql://, mysql://): made for many writers
    if address:
        raise DistillError(f"executor=ray on the Ray cluster {address} needs a tracking server every node reaches "
                           f"(MLFLOW_TRACKING_URI=http://...); the local store {uri} is served only on this machine")
    return LoopbackServer(uri)


def run_concurrent(p) -> str:
    from distill.phases.main import resolve_grid

    if p.executor not in EXECUTORS:
        raise DistillError(f"unknown executor {p.executor!r}; choose one of {', '.join(EXECUTORS)}")
    if p.rehearsal:
        raise DistillError("rehearsal=true runs with executor=sequential only")
    preset, teachers, students, seeds, backend, limit, judge = resolve_grid(p)
    steps = plan(p, preset, teachers, students, seeds, backend, limit, judge)
    if not judge:
        console.info("main: errors skipped: no judge configured (set OPENAI_API_KEY or judge_base_url)")
    params = {"preset": preset.name, "teachers": ",".join(teachers), "students": ",".join(students),
              "seeds": ",".join(map(str, seeds)), "limit": limit, "train_limit": p.train_limit, "n": p.n,
              "backend": backend, "judge": judge, "max_new_tokens": p.max_new_tokens, "executor": p.executor}
    import mlflow

    address = p.ray_address or os.environ.get("RAY_ADDRESS", "")
    store = mlflow.get_tracking_uri()
    with tracking_for_tasks(store, address) as server:
        ray, started_ray = _start_ray(p.ray_address)
        try:
            task_uri = server.wait()
            need = max(s.gpus for s in steps)
            have = ray.cluster_resources().get("GPU", 0)
            if need > have:
                worst = next(s for s in steps if s.gpus == need)
                raise DistillError(f"step {worst.name} needs {need:g} GPUs and the Ray cluster has {have:g}")
            mlflow.set_tracking_uri(task_uri)  # the main run, too, goes through the server
            return _run_graph(ray, steps, params, preset, task_uri)
        finally:
            mlflow.set_tracking_uri(store)
            if started_ray:
                ray.shutdown()


def _run_graph(ray, steps: list[Step], params: dict, preset, task_uri: str) -> str:
    import mlflow

    remote = {False: ray.remote(execute_step), True: ray.remote(max_calls=1)(execute_step_in_fresh_worker)}
    t0 = time.perf_counter()
    with mlflow.start_run(run_name=f"main-{preset.name}", tags={lineage.PHASE: "main"}) as main_run:
        tracking.log_params_merged(main_run, params)
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env |= {"MLFLOW_TRACKING_URI": task_uri, "MLFLOW_EXPERIMENT_ID": main_run.info.experiment_id,
                PARENT_ENV: main_run.info.run_id}
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
                    filled = {f: ",".join(done[d]["run_id"] for d in deps) for f, deps in step.inputs.items()}
                    options = {"num_gpus": step.gpus, "num_cpus": 1, "name": step.name}
                    ref = remote[step.gpus > 0].options(**options).remote(step.phase, replace(step.params, **filled), env)
                    running[ref] = step.name
                    pending.remove(step)
            if not running:
                break
            ready, _ = ray.wait(list(running), num_returns=1)
            name = running.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - the worker died (killed, out of memory): name the step
                result = {"run_id": None, "reused": False, "error": f"the Ray task died ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})", "seconds": None}
            result["finished_at"] = round(time.perf_counter() - t0, 2)
            if result["error"]:
                failed[name] = result
                where = f" (run {result['run_id']})" if result["run_id"] else ""
                console.error(f"main: {name}: FAILED{where}: {result['error']}")
            else:
                done[name] = result
                console.info(f"main: {name}: {'reused' if result['reused'] else 'ran'} {result['run_id']} "
                             f"({result['seconds']:.1f}s)")
        log = [{"step": s.name, "run_id": done[s.name]["run_id"], "reused": done[s.name]["reused"],
                "seconds": done[s.name]["seconds"], "finished_at": done[s.name]["finished_at"], "gpus": s.gpus}
               for s in steps if s.name in done]
        seconds = time.perf_counter() - t0
        reused = sum(s["reused"] for s in log)
        mlflow.log_metrics({"steps": len(log), "steps_reused": reused, "main_seconds": seconds,
                            "steps_failed": len(failed), "steps_skipped": len(skipped)})
        mlflow.log_dict({"steps": log, "failed": [{"step": n, **r} for n, r in failed.items()],
                         "skipped": [{"step": n, "needs": d} for n, d in skipped.items()]}, "steps.json")
        if failed:
            what = "; ".join(f"step {n} failed" + (f" (run {r['run_id']})" if r["run_id"] else "") + f": {r['error']}"
                             for n, r in failed.items())
            raise DistillError(f"{what}; {len(done)} other steps finished, {len(skipped)} waited on the failed ones; "
                               "type the same command again to continue from there")
        report_run = done["report"]["run_id"]
        mlflow.set_tag(lineage.REPORT_RUN_ID, report_run)
        from distill.phases.main import main_note

        name = f"main-{preset.name}" + (f" (reused {reused} of {len(log)} steps)" if reused else "")
        mlflow.set_tags({"mlflow.runName": name, "mlflow.note.content": main_note(
            preset.name, params, log, report_run, main_run.info.experiment_id)})
        console.info(f"main: {len(log)} steps as Ray tasks, {reused} reused, {seconds:.0f}s; report run "
                     f"{report_run}")
        return main_run.info.run_id

