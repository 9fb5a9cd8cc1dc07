"""Rates that earlier runs of the same model logged, to replace distill.estimates.throughput's assumptions.

`evaluate` logs `tokens_per_second` (output tokens over its generation) and `model_load_seconds`; `sft` logs
`train_tokens_per_second` (real tokens, padding left out, over its training). A rate counts for a plan when
its run FINISHED under the same preset and backend (so on the same kind of GPUs, with the same tensor
parallelism) and was no rehearsal; the newest such run of a model wins. A teacher's or the translator's own
step reuses its evaluation's rate: the same engine generating, on other prompts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    per_second: float            # output tokens/s (generation) or training tokens/s (sft)
    load_seconds: float | None   # the model's load before generating; None for sft (its load is assumed)
    run_id: str
    metric: str                  # the metric it came from, as the plan names it


@dataclass
class Rates:
    generation: dict[str, Rate]  # `model:<Hub id>` or `student:<name>` -> its newest evaluate run's rate
    sft: dict[str, Rate]         # student name -> its newest sft run's rate


def _finished(phase: str) -> list:
    import mlflow

    return mlflow.search_runs(search_all_experiments=True, output_format="list",
                              order_by=["attributes.start_time DESC"],
                              filter_string=f"tags.`distill.phase` = '{phase}' and attributes.status = 'FINISHED'")


def _same_setup(run, preset: str, backend: str | None) -> bool:
    from distill.tracking import lineage

    params = run.data.params
    return (params.get("preset") == preset and (backend is None or params.get("backend") == backend)
            and run.data.tags.get(lineage.REHEARSAL) != "true")


def earlier_rates(preset: str, backend: str) -> Rates:
    """The rates of the tracking store's earlier runs for this preset and backend (see the module's docstring)."""
    from distill.tracking import lineage

    generation: dict[str, Rate] = {}
    for run in _finished("evaluate"):
        rate = run.data.metrics.get("tokens_per_second")
        if not rate or not _same_setup(run, preset, backend):
            continue
        found = Rate(rate, run.data.metrics.get("model_load_seconds"), run.info.run_id, "tokens_per_second")
        params = run.data.params
        for key in (f"model:{params.get('model_source', '')}", f"student:{params.get('student', '')}"):
            if not key.endswith(":") and key not in generation:
                generation[key] = found
    sft: dict[str, Rate] = {}
    for run in _finished("sft"):
        rate, student = run.data.metrics.get("train_tokens_per_second"), run.data.tags.get(lineage.STUDENT, "")
        if rate and student and student not in sft and _same_setup(run, preset, None):
            sft[student] = Rate(rate, None, run.info.run_id, "train_tokens_per_second")
    return Rates(generation, sft)
