"""The lineage vocabulary: every `distill.*` tag a run carries, and the searches phases make by them.

A run says what it is (its phase, teacher, student, seed), which runs it consumed (`distill.<name>`
for each upstream run id) and how it came to be (cache key, code, claims). The tag names are the
user-facing contract (the MLflow UI, `mlflow.search_runs` filters, the README): their values never
change. Phases ask the named queries here instead of writing MLflow filter strings themselves.
"""

from __future__ import annotations

import json
import os

# What a run is
PHASE = "distill.phase"
TEACHER = "distill.teacher"
STUDENT = "distill.student"
SEED = "distill.seed"
TEACHERS = "distill.teachers"             # select: the teachers it has training sets for, comma-joined
TRANSLATOR = "distill.translator"
MODEL = "distill.model"                   # evaluate: the model evaluated, as named
ROLE = "distill.role"
MODE = "distill.mode"
EVAL_SET = "distill.eval_set"
BASELINE = "distill.baseline"             # evaluate: "<k>-shot" for a base student's baseline
REHEARSAL = "distill.rehearsal"           # stand-in models under real ids (distill/local_models/rehearsal.py)
ENTRY_POINT = "distill.entry_point"       # the run an entry point's upstream steps nest under (pipeline.upstream)
PLAN_ONLY = "distill.plan_only"           # `mlflow run`'s run of an entry point typed with plan=true: nothing ran

# The runs it consumed: phase_run tags each upstream run id `distill.<name>` (upstream_tags)
TRANSLATION_RUN_ID = "distill.translation_run_id"
TEACHER_RUN_ID = "distill.teacher_run_id"     # sft: the teachers' runs, comma-joined; select: `.<teacher>` each
TEACHER_RUN_IDS = "distill.teacher_run_ids"   # select: JSON teacher -> run id
SELECT_RUN_ID = "distill.select_run_id"
SFT_RUN_ID = "distill.sft_run_id"
EVAL_RUN_ID = "distill.eval_run_id"
TOKENS_RUN_ID = "distill.tokens_run_id"
REPORT_RUN_ID = "distill.report_run_id"       # main: its report
BEST_SFT_RUN_ID = "distill.best_sft_run_id"   # sweep: its best trial

# The model a run trained or evaluated
LOGGED_MODEL = "distill.logged_model"
MODEL_ID = "distill.model_id"
REGISTERED_MODEL = "distill.registered_model"
REGISTERED_VERSION = "distill.registered_version"
MODEL_URI = "distill.model_uri"
TRAIN_DIGEST = "distill.train_digest"

# Reuse: the key of the work, the code that did it, and runs that stand for others
CACHE_KEY = "distill.cache_key"
WORK_KEY = "distill.work_key"                 # the cache key without the code
CODE_VERSION = "distill.code_version"
CODE_FILES = "distill.code_files"             # JSON path -> hash of what code_version covers
CODE_CHANGED = "distill.not_reused_code_changed"
REUSED_IGNORING_CODE = "distill.reused_ignoring_code"   # `.<run id>` on the run that accepted it
REUSED_RUN_ID = "distill.reused_run_id"       # a pointer run: the run it reused
REUSED_PHASE = "distill.reused_phase"
RESUMED_FROM = "distill.resumed_from"
INCOMPLETE = "distill.incomplete"             # FINISHED with items left undone: not reused, resumed
EXPERIMENT = "distill.experiment"             # `mlflow run`'s run in Default: where the work went

# Who holds a cache key (distill.tracking.key_locks)
HEARTBEAT = "distill.heartbeat"
CLAIMED_AT = "distill.claimed_at"
KILLED_REASON = "distill.killed_reason"
# Where a try runs (key_locks.whereabouts): on the same machine a later try sees at once that its process is gone
HOST = "distill.host"
BOOT_ID = "distill.boot_id"                   # /proc/sys/kernel/random/boot_id: a reboot makes every pid new
PID_NAMESPACE = "distill.pid_namespace"       # containers on one machine share its boot id, not their pids
PID = "distill.pid"
PID_START = "distill.pid_start"               # the process's start, in clock ticks since boot: a reused pid differs

# The report
MISSING_CELLS = "distill.missing_cells"
MISSING = "distill.missing"


def upstream_tag(name: str) -> str:
    """The tag of an upstream run id: `translation_run_id` -> `distill.translation_run_id`."""
    return name if name.startswith("distill.") else f"distill.{name}"


def teachers_of(select_run) -> list[str]:
    """The teachers a select run has training sets for, in its order."""
    return [t for t in select_run.data.tags.get(TEACHERS, "").split(",") if t]


def _quoted(value) -> str:
    return "'" + str(value).replace("'", "\\'") + "'"


def _experiment_ids() -> list[str] | None:
    """The experiment of the run in progress (this process's, or `mlflow run`'s); None: the active one."""
    import mlflow

    run = mlflow.active_run()
    if run:
        return [run.info.experiment_id]
    env_run = os.environ.get("MLFLOW_RUN_ID")
    if env_run:
        return [mlflow.get_run(env_run).info.experiment_id]
    return None  # mlflow.search_runs searches the active experiment (set_experiment, MLFLOW_EXPERIMENT_*)


def search_phase_runs(phase: str | None = None, status: str | None = None, extra: str = "",
                      tags: dict[str, str] | None = None, params: dict[str, str] | None = None,
                      experiment_ids: list[str] | None = None, max_results: int = 5000) -> list:
    """Runs of a phase in the active experiment, newest first (stubs that only point at a reused run
    excluded): with these tag and param values, and `extra`, an MLflow filter of the caller's own."""
    import mlflow

    filters = [f"tags.`{PHASE}` = {_quoted(phase)}"] if phase else []
    if status:
        filters.append(f"attributes.status = '{status}'")
    filters += [f"tags.`{k}` = {_quoted(v)}" for k, v in (tags or {}).items()]
    filters += [f"params.`{k}` = {_quoted(v)}" for k, v in (params or {}).items()]
    if extra:
        filters.append(extra)
    if experiment_ids is None:
        experiment_ids = _experiment_ids()
    return mlflow.search_runs(experiment_ids, " and ".join(filters), max_results=max_results,
                              order_by=["attributes.start_time DESC"], output_format="list")


def newest_finished(phase: str, tags: dict[str, str] | None = None, params: dict[str, str] | None = None):
    """The newest FINISHED run of a phase with these tags and params, or None."""
    runs = search_phase_runs(phase, status="FINISHED", tags=tags, params=params, max_results=1)
    return runs[0] if runs else None


def runs_with_key(key: str, status: str | None = None, max_results: int = 5000) -> list:
    """Every try of the work with this cache key (any phase), newest first."""
    return search_phase_runs(status=status, tags={CACHE_KEY: key}, max_results=max_results)


def finished_with_work(work: str, max_results: int = 20) -> list:
    """FINISHED runs of the same work (parameters, inputs) by any version of the code, newest first."""
    return search_phase_runs(status="FINISHED", tags={WORK_KEY: work}, max_results=max_results)


def teacher_runs_of(translation_run_id: str) -> list:
    """The newest FINISHED teacher run of each teacher that answered this translation's questions."""
    newest: dict[str, object] = {}
    for run in search_phase_runs("teacher", status="FINISHED", tags={TRANSLATION_RUN_ID: translation_run_id}):
        newest.setdefault(run.data.tags.get(TEACHER), run)  # newest first
    return list(newest.values())


def select_run_for(teachers: list[str], preset: str):
    """The newest FINISHED select run of the preset with a training set for every one of these teachers."""
    return next((r for r in search_phase_runs("select", status="FINISHED", params={"preset": preset})
                 if set(teachers) <= set(teachers_of(r))), None)


def evaluations_of(eval_set: str) -> list:
    """FINISHED evaluate runs on this eval set, newest first."""
    return search_phase_runs("evaluate", status="FINISHED", tags={EVAL_SET: eval_set})


def judgments_of(eval_run_ids: set[str]) -> dict[str, object]:
    """The newest FINISHED errors run of each of these evaluations that has one."""
    found: dict[str, object] = {}
    for run in search_phase_runs("errors", status="FINISHED"):
        eval_id = run.data.tags.get(EVAL_RUN_ID)
        if eval_id in eval_run_ids:
            found.setdefault(eval_id, run)
    return found


def teacher_run_ids(select_run) -> dict[str, str]:
    """Teacher -> the teacher run a select run's training set came from."""
    return json.loads(select_run.data.tags.get(TEACHER_RUN_IDS, "{}"))
