"""Two tracking stores compared run by run: the same runs, params, metrics and tags, or what differs.

    python tools/compare_runs.py sqlite:///before/mlflow.db sqlite:///after/mlflow.db

For a change that must not change results (a refactor): run `main` on a fresh store before and after it, then
compare. Runs are matched by experiment, run name, `distill.phase` and Optuna trial; run ids inside values are
replaced by the identity of the run they name, so two stores compare although every id differs. What differs
between any two runs of the same work is left out: timings, keys that hash the code, heartbeats, process ids,
model ids (`m-...`, new per logged model) and the local port of a judge server; the run `mlflow run` opens is
matched by its entry point, not by the name MLflow drew for it. Exit status 1 when anything else differs.
"""

from __future__ import annotations

import re
import sys

TIME_METRICS = re.compile(r"(seconds|per_second|runtime|_time|samples_per|steps_per|flos)")
# mlflow.runName: the name is in a run's identity already (or drawn at random, for the run `mlflow run` opens)
SKIP_TAGS = re.compile(r"^(distill\.(cache_key|work_key|code_version|code_files|claimed_at|heartbeat|pid)"
                       r"|mlflow\.(source|user|log-model|gitRepo|project|runName)|mlflow\.note\.content$)")
SKIP_PARAMS = {"inputs_digest"}  # report: a hash of the run ids it read
RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")
MODEL_ID = re.compile(r"\bm-[0-9a-f]{32}\b")
LOCAL_PORT = re.compile(r"(127\.0\.0\.1|localhost):\d+")


def load(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    return experiments, client.search_runs(list(experiments), max_results=5000)


def identity(run, experiments) -> tuple:
    """Experiment, name, phase, trial; for the run `mlflow run` opens, whose name MLflow draws, its entry point."""
    tags = run.data.tags
    entry_point = tags.get("mlflow.project.entryPoint")
    name = f"mlflow run -e {entry_point}" if entry_point and "distill.phase" not in tags else run.info.run_name
    return experiments[run.info.experiment_id], name, tags.get("distill.phase", ""), tags.get("optuna.trial", "")


def compare(a: str, b: str) -> list[str]:
    """Every difference between the runs of store `a` and of store `b`, as lines; [] when they agree."""
    (ea, ra), (eb, rb) = load(a), load(b)
    by_a = {identity(r, ea): r for r in ra}
    by_b = {identity(r, eb): r for r in rb}
    names = {r.info.run_id: "|".join(map(str, identity(r, ea))) for r in ra}
    names.update({r.info.run_id: "|".join(map(str, identity(r, eb))) for r in rb})

    def norm(value: str) -> str:
        value = LOCAL_PORT.sub(r"\1:PORT", MODEL_ID.sub("m-ID", value))
        return RUN_ID.sub(lambda m: f"<{names.get(m.group(0), 'another run')}>", value)

    out = [f"runs: {len(ra)} and {len(rb)}"]
    if len(by_a) != len(ra) or len(by_b) != len(rb):
        out.append("two runs share an identity in one store: compared by the newest of each")
    for key in sorted(set(by_a) ^ set(by_b), key=str):
        out.append(f"only in {'the first' if key in by_a else 'the second'}: {key}")
    for key in sorted(set(by_a) & set(by_b), key=str):
        x, y = by_a[key], by_b[key]
        diffs = [f"status {x.info.status} != {y.info.status}"] if x.info.status != y.info.status else []
        pa = {k: norm(v) for k, v in x.data.params.items() if k not in SKIP_PARAMS}
        pb = {k: norm(v) for k, v in y.data.params.items() if k not in SKIP_PARAMS}
        diffs += [f"param {k}: {pa.get(k)!r} != {pb.get(k)!r}" for k in sorted(set(pa) | set(pb))
                  if pa.get(k) != pb.get(k)]
        ma, mb = x.data.metrics, y.data.metrics
        diffs += [f"metric {k}: {ma.get(k)} != {mb.get(k)}" for k in sorted(set(ma) | set(mb))
                  if ma.get(k) != mb.get(k) and not TIME_METRICS.search(k)]
        ta = {k: norm(v) for k, v in x.data.tags.items() if not SKIP_TAGS.match(k)}
        tb = {k: norm(v) for k, v in y.data.tags.items() if not SKIP_TAGS.match(k)}
        diffs += [f"tag {k}: {str(ta.get(k))[:150]!r} != {str(tb.get(k))[:150]!r}" for k in sorted(set(ta) | set(tb))
                  if ta.get(k) != tb.get(k)]
        out += [f"{key}: {d}" for d in diffs]
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    lines = compare(*argv)
    print("\n".join(lines))
    differ = len(lines) > 1
    print("the stores differ" if differ else "the same runs, params, metrics and tags")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
