"""Expected wall time of the `paper` preset's grid on 1, 8 and 32 GPUs, sequential vs `executor=ray`: an ESTIMATE.

No GPU was at hand, so the per-step times are not measured: they come from one published throughput figure and
stated scaling rules (below), and the schedule from the executor's own graph (`distill.phases.main.planner.plan`, the same
steps, dependencies and GPU requests `main -P executor=ray` submits). The schedule is simulated: the sequential
executor runs one step at a time; the Ray executor starts, in plan order, every step whose inputs exist and whose
GPUs are free (Ray's own scheduler may order them differently).

Assumptions (H100 80 GB, bf16; replace them with measured figures when there are some, e.g. bench/gpu_check.py):
- vLLM offline generation: 12,500 output tokens/s for an 8B model on one H100 (Llama 3.1 8B BF16, third-party vLLM
  benchmarks collected at morphllm.com/vllm-benchmarks, 2026), scaled by 8B / parameters, x 0.8 x tensor-parallel
  size when split over GPUs, at most 30,000 tokens/s (small students are limited by the scheduler, not the weights);
  model load 30 s + 2 s per GB of bf16 weights.
- Tokens: 200 per translation, 300 per teacher or student answer (paper Fig. 3 order of magnitude).
- SFT: 25% model FLOPs utilisation of 989 TFLOP/s, 6 N FLOPs per token x 4/3 for recomputation (gradient
  checkpointing, the preset's setting); 5,000 examples x 2 epochs x 400 tokens; 60 s to load and log the model.
- select, tokens, report: 60 s each on CPU; no judge (GPT-4o is an API whose speed is not the GPUs').

    python bench/grid_walltime.py          # prints the table and writes bench/out/grid_walltime-<time>.json
    python bench/grid_walltime.py --dry    # the same estimate (it takes seconds anyway), written as a dry result
"""

from __future__ import annotations

import argparse
import heapq
import sys

import _common  # noqa: F401  (sets the offline environment first)
from results import Results, add_common_args

PARAMS_B = {"7B": 7.6, "14B": 14.7, "32B": 32.8, "72B": 72.7, "translator": 70.6, "qwen2.5-0.5b": 0.49,
            "qwen2.5-1.5b": 1.54, "sarashina2.2-1b": 1.4, "llm-jp-3.1-1.8b": 1.87}
N_TRAIN, N_EVAL, N_SELECT = 7473, 1069, 5000


def gen_seconds(model: str, prompts: int, tokens: int, tp: int) -> float:
    p = PARAMS_B[model]
    rate = min(12_500 * 8 / p * (0.8 * tp if tp > 1 else 1), 30_000)
    return 30 + 2 * 2 * p + prompts * tokens / rate


def sft_seconds(student: str) -> float:
    rate = 0.25 * 989e12 / (6 * PARAMS_B[student] * 1e9 * 4 / 3)
    return 60 + N_SELECT * 2 * 400 / rate


def duration(step) -> float:
    prm = step.params
    if step.phase == "translate":
        return gen_seconds("translator", N_TRAIN, 200, int(step.gpus))
    if step.phase == "teacher":
        return gen_seconds(prm.teacher, N_TRAIN, 300, int(step.gpus))
    if step.phase == "sft":
        return sft_seconds(prm.student)
    if step.phase == "evaluate":
        model = prm.model or step.name.split(" ")[1]  # a student evaluation names its student
        return gen_seconds(model, N_EVAL, 300, max(int(step.gpus), 1))
    return 60.0


def simulate(steps, durations: dict, gpus: int, sequential: bool) -> float | None:
    if any(s.gpus > gpus for s in steps):
        return None
    if sequential:
        return sum(durations.values())
    t, free, done, running, pending = 0.0, gpus, set(), [], list(steps)
    while pending or running:
        for s in list(pending):
            if all(d in done for d in s.needs) and s.gpus <= free:
                free -= s.gpus
                heapq.heappush(running, (t + durations[s.name], s.name, s.gpus))
                pending.remove(s)
        t, name, g = heapq.heappop(running)
        free += g
        done.add(name)
    return t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "grid_walltime")
    args = ap.parse_args(argv)
    report = Results("grid_walltime", args)
    from distill.config.presets import load_preset
    from distill.phases.main import planner, MainParams

    preset = load_preset("paper")
    steps = planner.plan(MainParams(preset="paper", executor="ray"),
                         planner.Grid(preset, preset.grid.teachers, preset.grid.students, [42], preset.backend, None, False))
    durations = {s.name: duration(s) for s in steps}
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
    report.say(f"1 GPU without the 4-GPU steps (70B translator, 72B teacher): {rows[0]['without_4gpu_steps_hours']:.1f} h "
               f"sequential, {rows[0]['without_4gpu_steps_ray_hours']:.1f} h executor=ray")
    report.write({"estimate": True, "rows": rows, "step_seconds": durations, "step_gpus": {s.name: s.gpus for s in steps}},
                 args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
