"""Expected wall time of the `paper` preset's grid on 1, 8 and 32 GPUs, sequential vs `executor=ray`: an ESTIMATE.

The per-step times are distill.estimates' (the same figures `main -P plan=true` prints), from the
assumptions stated in distill/estimates/throughput.py (H100 80 GB, bf16: one published vLLM throughput figure
scaled by model size and tensor parallelism, SFT at an assumed 25% MFU, 60 s for each CPU step, no judge);
measured rates of earlier runs are not used here. The schedule comes from the executor's own graph
(`distill.pipeline.planner.plan`, the same steps, dependencies and GPU requests `main -P executor=ray`
submits) and is simulated (distill/estimates/schedule.py): the sequential executor runs one step at a time;
the Ray executor starts, in plan order, every step whose inputs exist and whose GPUs are free (Ray's own
scheduler may order them differently).

    python bench/grid_walltime.py          # prints the table and writes bench/out/grid_walltime-<time>.json
    python bench/grid_walltime.py --dry    # the same estimate (it takes seconds anyway), written as a dry result
"""

from __future__ import annotations

import argparse
import sys

import _common  # noqa: F401  (sets the offline environment first)
from results import Results, add_common_args

from distill.estimates.schedule import simulate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "grid_walltime")
    args = ap.parse_args(argv)
    report = Results("grid_walltime", args)
    from distill.config.presets import load_preset
    from distill.estimates.steps import estimate
    from distill.pipeline import MainParams, planner

    preset, p = load_preset("paper"), MainParams(preset="paper", executor="ray")
    grid = planner.Grid(preset, preset.grid.teachers, preset.grid.students, [42], preset.backend, None, False)
    steps = planner.plan(p, grid)
    durations = {name: e.seconds for name, e in estimate(steps, grid, p).items()}  # assumptions only: no store read
    rows = []
    for g in (1, 8, 32):
        seq, par = simulate(steps, durations, g, True), simulate(steps, durations, g, False)
        rows.append({"gpus": g, "sequential_hours": seq and seq / 3600, "ray_hours": par and par / 3600})
    cut = [s for s in steps if s.gpus <= 1]  # one GPU: without the 4-GPU steps (translator, 72B), served elsewhere
    names = {s.name for s in cut}
    for s in cut:
        s.inputs = {k: [d for d in v if d in names] for k, v in s.inputs.items()}
        s.after = [d for d in s.after if d in names]
    one = {s.name: durations[s.name] for s in cut}
    rows[0]["without_4gpu_steps_hours"] = simulate(cut, one, 1, True) / 3600
    rows[0]["without_4gpu_steps_ray_hours"] = simulate(cut, one, 1, False) / 3600
    f = lambda h: "n/a" if h is None else f"{h:.1f} h"  # noqa: E731
    report.table(["GPUs", "sequential", "executor=ray"], [[r["gpus"], f(r["sequential_hours"]), f(r["ray_hours"])]
                                                          for r in rows])
    report.say("1 GPU without the 4-GPU steps (70B translator, 72B teacher): "
               f"{rows[0]['without_4gpu_steps_hours']:.1f} h sequential, "
               f"{rows[0]['without_4gpu_steps_ray_hours']:.1f} h executor=ray")
    report.write({"estimate": True, "rows": rows, "step_seconds": durations,
                  "step_gpus": {s.name: s.gpus for s in steps}}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
