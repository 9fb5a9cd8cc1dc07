"""What each step of a real run cost, logged on its run when it ends, beside what the plan expected of it.

- `wall_seconds`: from the step's start in `main` (or in an entry point that builds its upstream, its target
  included when that runs alone) to its end: its process's start, the model's load and its work;
- `gpus`: the GPUs it held (its CUDA_VISIBLE_DEVICES, or its Ray task's GPUs);
- `gpu_seconds`: wall_seconds x gpus, so 0 for a step on CPU;
- `estimated_wall_seconds`, `estimated_gpu_seconds`: distill.estimates' figures for it, logged only where the
  estimate models the step (a GPU step of a model whose size is known, or a CPU step of a GPU preset).
A reused step logs nothing: its run already holds what it cost when it ran. The report's "estimated vs
actual" table (distill.phases.report.estimated_vs_actual) sums these per phase.
"""

from __future__ import annotations

import logging

from distill.estimates.cost_metrics import ESTIMATED_GPU_SECONDS, ESTIMATED_WALL, GPU_SECONDS, GPUS, WALL

console = logging.getLogger(__name__)


def estimates_for(p, grid, steps) -> dict:
    """Step name -> its estimate (distill.estimates.steps), rates measured by earlier runs included; empty when
    the store cannot be asked (the run goes on without them)."""
    from distill.estimates.measured import earlier_rates
    from distill.estimates.steps import estimate

    try:
        return estimate(steps, grid, p, earlier_rates(grid.preset.name, grid.backend))
    except Exception as e:  # noqa: BLE001 - an estimate is a courtesy; the run does not stop for it
        console.warning(f"main: no estimates for this run's steps ({type(e).__name__}: {e})")
        return {}


def metrics(seconds: float, gpus: int, estimate=None) -> dict[str, float]:
    out = {WALL: seconds, GPUS: gpus, GPU_SECONDS: seconds * gpus}
    if estimate is not None and estimate.seconds is not None:
        out |= {ESTIMATED_WALL: estimate.seconds, ESTIMATED_GPU_SECONDS: estimate.gpu_seconds}
    return out


def log_step_time(run_id: str, seconds: float | None, gpus: int, estimate=None) -> None:
    """The step's cost on its (finished) run; a store that refuses is warned about, the grid goes on."""
    if not run_id or seconds is None:
        return
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().log_batch(run_id, metrics=[_metric(k, v) for k, v in metrics(seconds, gpus, estimate).items()])
    except Exception as e:  # noqa: BLE001 - the step's work is done and recorded; its timing is a courtesy
        console.warning(f"could not log the step's time on run {run_id} ({type(e).__name__}: {e})")


def _metric(key: str, value: float):
    import time

    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), 0)
