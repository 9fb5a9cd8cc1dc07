"""MLflow plumbing shared by every phase: reuse of finished runs, lineage tags, dataset inputs, tables.

A phase run is reused when a FINISHED run in the same experiment has the same cache key: the
hash of its entry point, its parameters, the run ids it consumed and the code version.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from distill import DistillError
from distill.phases import module_name

TAG_PHASE = "distill.phase"
TAG_KEY = "distill.cache_key"
TAG_CODE = "distill.code_version"
TAG_REUSED = "distill.reused_run_id"
TAG_RESUMED = "distill.resumed_from"
TAG_WORK = "distill.work_key"             # the cache key without the code
TAG_CODE_FILES = "distill.code_files"     # JSON path -> hash of what code_version covers
TAG_CODE_CHANGED = "distill.not_reused_code_changed"
TAG_IGNORED_CODE = "distill.reused_ignoring_code"
TAG_REHEARSAL = "distill.rehearsal"
IGNORE_CODE = "ignore_code"

# Set by `main` (and in its step processes): the main run that phase runs nest under when none is
# active in this process; a rehearsal (stand-in models under real ids); and the parent's reuse probe.
PARENT_RUN_ID: str | None = None
REHEARSAL = False
REUSE_ONLY = False


class NotReused(Exception):
    """Raised by phase_run under REUSE_ONLY where the work would have to be done."""
PACKAGE_DIR = Path(__file__).parent


# The module each generation backend lives in. `generation.base.make_generator` picks one by name,
# so an import walk would tie every phase that touches generation to all three; instead a phase's
# key covers the backend it runs with (its `backend` parameter) and no other.
BACKEND_MODULES = {"transformers": "distill.generation.hf", "vllm": "distill.generation.vllm_backend",
                   "openai": "distill.generation.openai_backend"}
_DISPATCH_FUNCTIONS = {"make_generator"}
RESOURCE_DIR = "resources"


def _module_file(module: str) -> Path | None:
    path = PACKAGE_DIR / (module.removeprefix("distill").lstrip(".").replace(".", "/") or "__init__")
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _walk(tree):
    """ast.walk that does not enter the backend dispatch (see BACKEND_MODULES)."""
    import ast

    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in _DISPATCH_FUNCTIONS:
            continue
        todo.extend(ast.iter_child_nodes(node))


def _distill_imports(module: str) -> set[str]:
    """The distill modules a module imports, anywhere in its body (lazy imports included)."""
    file = _module_file(module)
    return set() if file is None else set(_imports_in(file.read_text(encoding="utf-8")))


@lru_cache(maxsize=None)
def _imports_in(source: str) -> frozenset[str]:
    """Cached by the source text itself: an edited module is parsed again, an unchanged one never."""
    import ast

    found = set()
    for node in _walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distill"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from distill import tracking`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("distill"))
    return frozenset(found)


@lru_cache(maxsize=None)
def _file_names_in(source: str) -> tuple[frozenset[str], frozenset[str]]:
    """String constants, and f-strings as patterns (`f"gsm8k_{split}_sample.jsonl"` names both samples)."""
    import ast

    names, patterns = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
        elif isinstance(node, ast.JoinedStr):
            pattern = "".join(v.value if isinstance(v, ast.Constant) else "*" for v in node.values)
            if "." in pattern and not pattern.startswith("*") and not any(c.isspace() for c in pattern):
                patterns.add(pattern)  # a file name, not a message
    return frozenset(names), frozenset(patterns)


def _resources_read(file: Path) -> set[Path]:
    """Shipped data files a module names."""
    import fnmatch

    names, patterns = _file_names_in(file.read_text(encoding="utf-8"))
    found = set()
    for data in (PACKAGE_DIR / RESOURCE_DIR).rglob("*"):
        if data.is_file() and (data.name in names or any(fnmatch.fnmatchcase(data.name, p) for p in patterns)):
            found.add(data)
    return found


def warm_code_cache() -> None:
    """Parse every module of the package once, so that processes forked afterwards (distill.steps) compute
    their reuse keys by hashing files only (parsing them costs each step ~0.7 s)."""
    for file in PACKAGE_DIR.rglob("*.py"):
        source = file.read_text(encoding="utf-8")
        _imports_in(source)
        _file_names_in(source)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _preset_digest(name: str) -> tuple[str, str] | None:
    """The preset in use, by its parsed content: a comment or a reordering changes nothing."""
    import yaml

    from distill.config import preset_file

    path = preset_file(name)
    if path is None or not path.is_file():
        return None
    content = yaml.safe_load(path.read_text(encoding="utf-8"))
    label = str(path.relative_to(PACKAGE_DIR.parent)) if path.is_relative_to(PACKAGE_DIR) else str(path)
    return label, _digest(json.dumps(content, sort_keys=True, default=str).encode())


@lru_cache(maxsize=None)
def _code_files(phase: str | None, preset: str | None, backend: str | None) -> tuple[tuple[str, str], ...]:
    if phase is None:  # everything: for callers that want one version of the whole package
        files = {p for p in PACKAGE_DIR.rglob("*") if p.is_file() and p.suffix in {".py", ".yaml", ".json", ".tsv", ".jsonl"}}
    else:
        seen, todo = set(), [module_name(phase), "distill"] + ([BACKEND_MODULES[backend]] if backend in BACKEND_MODULES else [])
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            todo.extend(_distill_imports(module))
        files = {f for f in map(_module_file, seen) if f is not None}
        files |= {data for f in list(files) for data in _resources_read(f)}
    out = {str(f.relative_to(PACKAGE_DIR.parent)): _digest(f.read_bytes()) for f in files}
    if phase is not None and preset:
        entry = _preset_digest(preset)
        if entry:
            out[entry[0]] = entry[1]
    return tuple(sorted(out.items()))


def code_files(phase: str | None = None, preset: str | None = None, backend: str | None = None) -> dict[str, str]:
    """Path -> content hash of exactly what decides a phase's results: its module and the distill
    modules it imports (transitively; of the generation backends only the one it runs with), the
    shipped data those modules name, and the preset in use (not the other presets)."""
    return dict(_code_files(phase, preset, backend))


def code_version(phase: str | None = None, preset: str | None = None, backend: str | None = None) -> str:
    """One hash of code_files: editing the report does not invalidate finished teacher runs,
    editing the scoring code does, editing the vLLM backend does not retrain a student."""
    return _digest(json.dumps(code_files(phase, preset, backend), sort_keys=True).encode())


def _work_payload(phase: str, params: dict[str, Any], upstream: dict[str, str] | None) -> dict:
    payload = {"phase": phase, "params": {k: str(v) for k, v in sorted(params.items())},
               "upstream": dict(sorted((upstream or {}).items()))}
    if REHEARSAL:  # stand-in models under real ids: never mistaken for (or reused as) real work
        payload["rehearsal"] = True
    return payload


def work_key(phase: str, params: dict[str, Any], upstream: dict[str, str] | None = None) -> str:
    """The cache key without the code: the same work done by any version of the code."""
    return hashlib.sha256(json.dumps(_work_payload(phase, params, upstream), sort_keys=True).encode()).hexdigest()[:16]


def cache_key(phase: str, params: dict[str, Any], upstream: dict[str, str] | None = None) -> str:
    payload = {**_work_payload(phase, params, upstream),
               "code": code_version(phase, _opt(params.get("preset")), _opt(params.get("backend")))}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _opt(value) -> str | None:
    return str(value) if value not in (None, "") else None


def ensure_tracking_reachable() -> None:
    """A down tracking server otherwise costs minutes of retries and a deep traceback."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=5)
    except requests.RequestException as e:
        raise DistillError(
            f"cannot reach the MLflow tracking server at {uri} ({type(e).__name__}); "
            "start it (mlflow server ...) or unset MLFLOW_TRACKING_URI to use ./mlflow.db"
        ) from None


def ensure_tracking_store() -> None:
    """Create a SQLite tracking store once, under a file lock: two processes that start at once on a
    brand-new file otherwise both run MLflow's table setup and one of them crashes."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return
    import fcntl
    import logging

    from mlflow.tracking._model_registry.utils import _get_store as registry_store
    from mlflow.tracking._tracking_service.utils import _get_store as tracking_store

    db = os.path.abspath(uri.removeprefix("sqlite:///").split("?")[0] or "mlflow.db")
    lock = Path(tempfile.gettempdir()) / f"distill-store-{hashlib.sha256(db.encode()).hexdigest()[:16]}.lock"
    quiet = logging.getLogger("mlflow.store.db.utils")  # "Creating initial MLflow database tables..."
    level = quiet.level
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            quiet.setLevel(logging.WARNING)
            tracking_store(uri)
            registry_store(uri)
        finally:
            quiet.setLevel(level)
            fcntl.flock(f, fcntl.LOCK_UN)


def _escape(value: str) -> str:
    return value.replace("'", "\\'")


def search_phase_runs(phase: str | None = None, status: str | None = None, extra: str = "",
                      experiment_ids: list[str] | None = None, max_results: int = 5000) -> list:
    """Runs of a phase in the active experiment (stubs that only point at a reused run excluded)."""
    from mlflow.tracking import MlflowClient

    filters = []
    if phase:
        filters.append(f"tags.`{TAG_PHASE}` = '{_escape(phase)}'")
    if status:
        filters.append(f"attributes.status = '{status}'")
    if extra:
        filters.append(extra)
    if experiment_ids is None:
        experiment_ids = [_active_experiment_id()]
    return MlflowClient().search_runs(experiment_ids, " and ".join(filters), max_results=max_results,
                                      order_by=["attributes.start_time DESC"])


def _active_experiment_id() -> str:
    import mlflow

    run = mlflow.active_run()
    if run:
        return run.info.experiment_id
    env_run = os.environ.get("MLFLOW_RUN_ID")
    if env_run:
        return mlflow.get_run(env_run).info.experiment_id
    return mlflow.tracking.fluent._get_experiment_id()


def experiment_name(preset_name: str) -> str:
    """Every preset's runs in an experiment of their own: `distill-offline`, `distill-paper`."""
    return f"distill-{preset_name}"


def use_preset_experiment(preset: dict) -> str | None:
    """Make `distill-<preset>` the active experiment (created with a description) unless the user chose
    one (MLFLOW_EXPERIMENT_NAME / MLFLOW_EXPERIMENT_ID, `mlflow run --experiment-name`, whose run is
    MLFLOW_RUN_ID). Reuse lookups, report inputs and step processes all search the active experiment."""
    import mlflow
    from mlflow.tracking import MlflowClient

    name = experiment_name(preset.name)
    client = MlflowClient()
    cli_run = os.environ.get("MLFLOW_RUN_ID")
    if cli_run and os.environ.get("MLFLOW_EXPERIMENT_ID") == "0" and not os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        # `mlflow run` without --experiment-name made its run in Default: that run says where the work went
        client.set_tag(cli_run, "distill.experiment", name)
        client.set_tag(cli_run, "mlflow.note.content", f"This `mlflow run` logged its runs into the experiment "
                       f"`{name}` (one per preset); `--experiment-name` chooses another.")
        os.environ.pop("MLFLOW_RUN_ID")
        os.environ.pop("MLFLOW_EXPERIMENT_ID")
    if any(os.environ.get(v) for v in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")) \
            or mlflow.active_run():
        return None
    exp = client.get_experiment_by_name(name)
    if exp is None:
        note = (f"**distill**, preset `{preset.name}`: {(preset.description or '').strip()}\n\n"
                "Every step of `main` is a nested run under its `main-...` run; the main run's description "
                "has Table 1 and a link to the report run (`report.md`). Compare student evaluations with "
                "the params `teacher`, `student`, `seed`, `role`; `accuracy` is in percent.")
        try:
            client.create_experiment(name, tags={"mlflow.note.content": note})
        except Exception:  # noqa: BLE001 - another process created it first
            pass
    os.environ["MLFLOW_EXPERIMENT_NAME"] = name  # step processes and Ray tasks inherit it
    mlflow.set_experiment(name)
    return name


TAG_INCOMPLETE = "distill.incomplete"


def _complete(run) -> bool:
    return run.info.status == "FINISHED" and run.data.tags.get(TAG_INCOMPLETE) != "true"


def find_reusable(key: str) -> str | None:
    """A FINISHED run of the same work that left nothing undone (see TAG_INCOMPLETE)."""
    runs = search_phase_runs(status="FINISHED", extra=f"tags.`{TAG_KEY}` = '{key}'", max_results=20)
    return next((r.info.run_id for r in runs if _complete(r)), None)


def find_same_work(work: str, files: dict[str, str]) -> tuple[str, list[str]] | None:
    """A FINISHED, complete run of the same work (parameters, inputs) done with other code, and the
    files whose content differs (from the per-file hashes every run carries)."""
    runs = search_phase_runs(status="FINISHED", extra=f"tags.`{TAG_WORK}` = '{work}'", max_results=20)
    for run in runs:
        if not _complete(run):
            continue
        try:
            old = json.loads(run.data.tags.get(TAG_CODE_FILES, ""))
        except ValueError:
            old = {}
        changed = sorted(f for f in set(old) | set(files) if old.get(f) != files.get(f))
        return run.info.run_id, changed or ["(unknown)"]
    return None


def reuse_mode(value) -> bool | str:
    """`reuse`: true, false, or ignore_code (accept a finished run of the same work whose code changed)."""
    if isinstance(value, bool):
        return value
    from distill.params_text import yes_no

    text = str(value).strip().lower()
    if text == IGNORE_CODE:
        return IGNORE_CODE
    try:
        return yes_no(text) if text else False
    except ValueError:
        pass
    raise DistillError(f"reuse must be true, false or {IGNORE_CODE} (got {value!r})")


def find_unfinished(key: str) -> list:
    """Earlier tries of the same work that did not finish (killed, failed, dead while marked running,
    or finished with some items left undone), whose finished items a new try takes over. A run that is
    still alive (a fresh heartbeat) is not taken over."""
    runs = search_phase_runs(extra=f"tags.`{TAG_KEY}` = '{key}'")
    now = time.time()
    return [r for r in runs if not _complete(r) and not is_live(r, now)]


# Who holds a cache key. A run working on a key carries TAG_CLAIMED (when it claimed the key) and
# TAG_HEARTBEAT, renewed by a daemon thread every DISTILL_HEARTBEAT_S seconds. A RUNNING run whose
# heartbeat is older than DISTILL_HEARTBEAT_TIMEOUT_S is dead (kill -9, a lost machine): the next try
# marks it KILLED and takes over its shards or checkpoints. A second try of live work waits for it and
# reuses its result. Two tries that claim at the same moment both see each other after a short settle
# time (DISTILL_CLAIM_SETTLE_S) and the earlier claim wins; this assumes the clocks of the machines
# agree to within that time.
TAG_HEARTBEAT = "distill.heartbeat"
TAG_CLAIMED = "distill.claimed_at"
TAG_KILLED = "distill.killed_reason"


def _env_seconds(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def heartbeat_interval() -> float:
    return _env_seconds("DISTILL_HEARTBEAT_S", 15.0)


def heartbeat_timeout() -> float:
    return _env_seconds("DISTILL_HEARTBEAT_TIMEOUT_S", 4 * heartbeat_interval())


def _last_beat(run) -> float:
    try:
        return float(run.data.tags[TAG_HEARTBEAT])
    except (KeyError, ValueError):
        return run.info.start_time / 1000  # a run from before heartbeats: its start counts


def is_live(run, now: float | None = None) -> bool:
    return run.info.status == "RUNNING" and (now or time.time()) - _last_beat(run) < heartbeat_timeout()


def _claim_order(run) -> tuple[float, str]:
    try:
        return float(run.data.tags[TAG_CLAIMED]), run.info.run_id
    except (KeyError, ValueError):
        return run.info.start_time / 1000, run.info.run_id


def _running_with_key(key: str) -> list:
    return search_phase_runs(status="RUNNING", extra=f"tags.`{TAG_KEY}` = '{key}'")


class Heartbeat:
    """A daemon thread that renews the run's heartbeat tag until stopped."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"distill-heartbeat-{run_id[:8]}", daemon=True)

    def _beat(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        while not self._stop.wait(heartbeat_interval()):
            try:
                client.set_tag(self.run_id, TAG_HEARTBEAT, f"{time.time():.3f}")
            except Exception:  # a short outage of the server: the next beat tries again
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()


def wait_for_holders(phase: str, key: str, me: tuple[float, str] | None = None) -> str | None:
    """Wait while a live run holds the key (claimed before `me`, when given); then the id of a FINISHED
    run of the work to reuse, or None when there is none and the work is ours."""
    announced = False
    while True:
        prior = find_reusable(key)
        if prior:
            return prior
        now = time.time()
        holders = [r for r in _running_with_key(key) if is_live(r, now)
                   and (me is None or (r.info.run_id != me[1] and _claim_order(r) < me))]
        if not holders:
            return None
        if not announced:
            print(f"[distill] {phase}: waiting for RUNNING run {holders[0].info.run_id} (same work, heartbeat "
                  f"{now - _last_beat(holders[0]):.0f}s ago)", file=sys.stderr)
            announced = True
        time.sleep(min(heartbeat_interval(), 5.0))


def mark_dead(key: str, me: str) -> list[str]:
    """RUNNING tries of the key whose heartbeat stopped: KILLED, with the reason and who took over."""
    from mlflow.tracking import MlflowClient

    client, now, dead = MlflowClient(), time.time(), []
    for r in _running_with_key(key):
        if r.info.run_id != me and not is_live(r, now):
            client.set_tag(r.info.run_id, TAG_KILLED, f"no heartbeat for {now - _last_beat(r):.0f}s; "
                                                      f"taken over by run {me}")
            client.set_terminated(r.info.run_id, "KILLED")
            dead.append(r.info.run_id)
    if dead:
        print(f"[distill] marked {', '.join(dead)} KILLED (no heartbeat); run {me} takes over", file=sys.stderr)
    return dead


@dataclass
class PhaseRun:
    run_id: str
    reused: bool
    key: str


# Every phase run started or reused in this process, in order: `main` reports from it.
EVENTS: list[PhaseRun] = []


def _run_name(phase: str, tags: dict[str, str]) -> str:
    parts = [phase] + [tags[t] for t in ("distill.teacher", "distill.student") if tags.get(t)]
    return "-".join(parts)


@contextmanager
def phase_run(phase: str, params: dict[str, Any], upstream: dict[str, str] | None = None,
              tags: dict[str, str] | None = None, reuse: bool = True, run_name: str | None = None) -> Iterator[PhaseRun]:
    """Start (or reuse) the run of one phase.

    Yields PhaseRun; when `reused` is True the body must not do the work again. Under
    `mlflow run` the run that the CLI made is used; inside `main` the run is nested.
    """
    import mlflow

    ensure_tracking_reachable()
    mode = reuse_mode(reuse)
    upstream = {k: v for k, v in (upstream or {}).items() if v}
    tags = {k: str(v) for k, v in (tags or {}).items() if v not in (None, "")}
    preset, backend = _opt(params.get("preset")), _opt(params.get("backend"))
    key = cache_key(phase, params, upstream)
    work = work_key(phase, params, upstream)
    files = code_files(phase, preset, backend)
    prior = wait_for_holders(phase, key) if mode else None
    stale = find_same_work(work, files) if mode and not prior else None
    ignored = None
    if stale and mode == IGNORE_CODE:
        prior, ignored = stale
    active = mlflow.active_run() is not None
    nested = active or PARENT_RUN_ID is not None
    if prior:
        if ignored is None:
            print(f"[distill] {phase}: reusing FINISHED run {prior} (same parameters, inputs and code)", file=sys.stderr)
        else:
            print(f"[distill] {phase}: reusing FINISHED run {prior} although the code changed since "
                  f"({', '.join(ignored)}): reuse={IGNORE_CODE}", file=sys.stderr)
        note = {f"{TAG_IGNORED_CODE}.{prior}": f"{phase}: {', '.join(ignored)}"[:5000]} if ignored else {}
        if note and nested:  # the run that reused it: `main`
            if active:
                mlflow.set_tags(note)
            else:
                from mlflow.tracking import MlflowClient

                for k, v in note.items():
                    MlflowClient().set_tag(PARENT_RUN_ID, k, v)
        elif (os.environ.get("MLFLOW_RUN_ID") or note) and not nested:
            # `mlflow run` already made a run (or the acceptance must be on record): leave a pointer,
            # without the phase tag, so that searches by phase find only the real run.
            with mlflow.start_run():
                mlflow.set_tags({TAG_REUSED: prior, "distill.reused_phase": phase, **note})
        EVENTS.append(PhaseRun(prior, True, key))
        yield EVENTS[-1]
        return
    if REUSE_ONLY:
        raise NotReused(phase)
    claimed = f"{time.time():.3f}"
    all_tags = {TAG_PHASE: phase, TAG_KEY: key, TAG_CODE: code_version(phase, preset, backend), TAG_WORK: work,
                TAG_CODE_FILES: json.dumps(files, separators=(",", ":")), TAG_CLAIMED: claimed, TAG_HEARTBEAT: claimed,
                **tags, **{f"distill.{k}" if not k.startswith("distill.") else k: v for k, v in upstream.items()}}
    if REHEARSAL:
        all_tags[TAG_REHEARSAL] = "true"
    if stale:
        print(f"[distill] {phase}: FINISHED run {stale[0]} did the same work with other code (changed: "
              f"{', '.join(stale[1])}); running again. reuse={IGNORE_CODE} would accept it", file=sys.stderr)
        all_tags[TAG_CODE_CHANGED] = f"{stale[0]}: {', '.join(stale[1])}"[:5000]
    parent = PARENT_RUN_ID if not active else None
    with mlflow.start_run(run_name=run_name or _run_name(phase, tags), nested=nested, parent_run_id=parent, tags=all_tags) as run, \
            Heartbeat(run.info.run_id):
        if mode:  # another try claimed the same work at the same moment: the earlier claim does it
            time.sleep(_env_seconds("DISTILL_CLAIM_SETTLE_S", 0.25))
            prior = wait_for_holders(phase, key, me=(float(claimed), run.info.run_id))
            if prior:
                _become_pointer(run.info.run_id, prior, phase)
                EVENTS.append(PhaseRun(prior, True, key))
                yield EVENTS[-1]
                return
        mark_dead(key, run.info.run_id)
        log_params_merged(run, params)
        EVENTS.append(PhaseRun(run.info.run_id, False, key))
        yield EVENTS[-1]


def _become_pointer(run_id: str, prior: str, phase: str) -> None:
    """A try that lost the claim to a run that then finished: a pointer to it, out of phase searches."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for tag in (TAG_PHASE, TAG_KEY, TAG_WORK, TAG_CODE_FILES, TAG_CLAIMED, TAG_HEARTBEAT):
        client.delete_tag(run_id, tag)
    client.set_tag(run_id, TAG_REUSED, prior)
    client.set_tag(run_id, "distill.reused_phase", phase)
    print(f"[distill] {phase}: reusing FINISHED run {prior} (it claimed the same work first)", file=sys.stderr)


def _same_value(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return a.lower() == b.lower()


def earlier_tries(pr: "PhaseRun", tag: bool = True) -> list[str]:
    """Ids of earlier unfinished tries of this run's work (their finished items carry over);
    tagged on the run as `distill.resumed_from` when there are any."""
    import mlflow

    ids = [r.info.run_id for r in find_unfinished(pr.key) if r.info.run_id != pr.run_id]
    if ids and tag:
        mlflow.set_tag(TAG_RESUMED, ",".join(ids))
    return ids


def log_params_merged(run, params: dict[str, Any]) -> None:
    """Log resolved parameters beside those `mlflow run` already logged as the user typed them.

    MLflow forbids changing a logged value; a value typed differently but equal (`1e-5`) is kept,
    and the resolved one, if different, goes to `<key>.resolved`.
    """
    import mlflow

    existing = mlflow.get_run(run.info.run_id).data.params
    out = {}
    for k, v in params.items():
        text = "" if v is None else str(v)
        if k not in existing:
            out[k] = text
        elif not _same_value(existing[k], text):
            out[f"{k}.resolved"] = text
    if out:
        mlflow.log_params(out)


def log_jsonl(records: list[dict], filename: str, artifact_path: str | None = None) -> None:
    import mlflow

    from distill.jsonl import write_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        write_jsonl(path, records)
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_records(records: list[dict], name: str) -> None:
    """Per-example results as an MLflow table (UI) and a JSONL artifact (scripts)."""
    import mlflow
    import pandas as pd

    log_jsonl(records, f"{name}.jsonl")
    if records:
        mlflow.log_table(data=pd.DataFrame.from_records(records), artifact_file=f"{name}.json")


def log_dataset(records: list[dict], name: str, source: str, context: str):
    """A dataset input with a digest, so the UI shows which data a run used; returns the digest."""
    import mlflow
    import pandas as pd

    df = pd.DataFrame.from_records(records)
    with warnings.catch_warnings():  # a local path matches two equivalent source types; either is right
        warnings.simplefilter("ignore", UserWarning)
        if source.startswith("hf://datasets/"):
            from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

            source = HuggingFaceDatasetSource(path=source.removeprefix("hf://datasets/"))
        if isinstance(source, str) and source.startswith("runs:/"):
            from mlflow.tracking.artifact_utils import get_artifact_uri

            run_id, _, path = source.removeprefix("runs:/").partition("/")
            source = get_artifact_uri(run_id, path)  # the run's artifact store: a path or mlflow-artifacts:/
        try:
            dataset = mlflow.data.from_pandas(df, source=source, name=name)
        except mlflow.exceptions.MlflowException:  # a store MLflow has no source type for
            from mlflow.data.http_dataset_source import HTTPDatasetSource

            dataset = mlflow.data.from_pandas(df, source=HTTPDatasetSource(str(source)), name=name)
    mlflow.log_input(dataset, context=context)
    return dataset.digest


def download_artifact(run_id: str, path: str, dst: str | None = None) -> Path:
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dst))
    except Exception as e:
        raise DistillError(f"run {run_id} has no artifact {path!r} ({type(e).__name__})") from None


def get_run(run_id: str):
    import mlflow

    try:
        return mlflow.get_run(run_id)
    except Exception:
        raise DistillError(f"no MLflow run with id {run_id!r} in {mlflow.get_tracking_uri()}") from None


def require_phase(run, phase: str) -> None:
    actual = run.data.tags.get(TAG_PHASE)
    if actual != phase:
        raise DistillError(f"run {run.info.run_id} is a {actual or 'non-distill'} run, not a {phase} run")


def latest_finished(phase: str, tags: dict[str, str] | None = None, params: dict[str, str] | None = None):
    """The newest FINISHED run of a phase with these tags and params, or None."""
    extra = [f"tags.`{k}` = '{_escape(v)}'" for k, v in (tags or {}).items()]
    extra += [f"params.`{k}` = '{_escape(v)}'" for k, v in (params or {}).items()]
    runs = search_phase_runs(phase, status="FINISHED", extra=" and ".join(extra), max_results=1)
    return runs[0] if runs else None


def require_run(run_id: str | None, phase: str, what: str, **search):
    """The run the user named, or else the newest fitting one; a clear error when there is none."""
    if run_id:
        run = get_run(run_id)
        require_phase(run, phase)
        if run.info.status != "FINISHED":
            raise DistillError(f"{phase} run {run_id} is {run.info.status}, not FINISHED; finish it first")
        return run
    run = latest_finished(phase, **search)
    if run is None:
        raise DistillError(f"no FINISHED {phase} run found in this experiment for {what}; run `{phase}` first "
                           f"or name one")
    return run


def read_text_artifact(run_id: str, path: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return download_artifact(run_id, path, tmp).read_text(encoding="utf-8")


def read_jsonl_artifact(run_id: str, path: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        from distill.jsonl import read_jsonl

        return read_jsonl(download_artifact(run_id, path, tmp))
