"""The disk a preset's SFT grid takes in the artifact store, from the preset: students' parameters x bytes.

A Trainer checkpoint of full-parameter SFT holds the fp32 weights (4 B a parameter; the weights stay fp32
under bf16 autocast) and AdamW's two fp32 moments (8 B); gradients are not saved: 12 B a parameter. The
logged model is the fp32 safetensors of the trained weights: 4 B. With keep_checkpoints=last a run holds
at most two checkpoints at once (the next one is uploaded before the older goes) and none once its model
is logged; with `all` it keeps one per epoch (or per save_steps). A student's parameter count comes from
its config when the model is in the local Hugging Face cache (counted on the meta device, nothing
allocated), else from distill.estimates.sizes.PUBLISHED_PARAMS. `sft_step_gb` is one SFT step's share, for a plan.

    python -m distill.estimates.disk --preset paper
"""

from __future__ import annotations

import argparse
import math

from distill import DistillError
from distill.estimates.sizes import GB, PUBLISHED_PARAMS, count_parameters

CHECKPOINT_BYTES = 12   # fp32 weights + AdamW exp_avg + exp_avg_sq
MODEL_BYTES = 4         # fp32 weights, as logged
CHECKPOINTS_AT_ONCE = 2  # keep_checkpoints=last: the next one is uploaded before the older goes


def student_parameters(preset, local: bool = True) -> dict[str, int]:
    """Each student of the preset's grid -> its parameter count (its local config first unless `local` is
    false, then the table)."""
    from distill.config.models import materialize, resolve_role

    out = {}
    for name in preset.grid.students:
        ref = resolve_role(name, preset, "student")
        source = str(ref.source)
        n = count_parameters(materialize(ref).model if source.startswith("tiny:") else source) if local else None
        n = n or PUBLISHED_PARAMS.get(source)
        if n is None:
            raise DistillError(f"no parameter count for student {name} ({ref.source}): its config is not on this "
                               "machine and distill/estimates/sizes.py's PUBLISHED_PARAMS does not list it")
        out[name] = n
    return out


def sft_disk(preset, keep: str = "last", local: bool = True) -> dict:
    """GB the preset's SFT grid (teachers x students x seeds) leaves in and needs of the artifact store."""
    params = student_parameters(preset, local)
    runs = len(preset.grid.teachers) * len(preset.grid.seeds)  # runs per student
    per_run = math.ceil(preset.sft.num_train_epochs)           # one checkpoint an epoch
    models = sum(runs * MODEL_BYTES * n for n in params.values())
    largest = max(params.values())
    if keep == "all":
        kept = sum(runs * per_run * CHECKPOINT_BYTES * n for n in params.values())
        after, peak = models + kept, models + kept
    else:
        kept = 0
        after, peak = models, models + CHECKPOINTS_AT_ONCE * CHECKPOINT_BYTES * largest
    return {"runs": runs * len(params), "checkpoints_per_run": per_run,
            "students_b": {k: v / 1e9 for k, v in params.items()}, "models_gb": models / GB,
            "checkpoints_gb": kept / GB, "store_after_gb": after / GB, "store_peak_gb": peak / GB,
            "checkpoint_gb_largest": CHECKPOINT_BYTES * largest / GB}


def sft_step_gb(n_params: int, keep: str = "last", epochs: float = 1) -> float:
    """The most one SFT run holds in the artifact store at once, in GB: with `last`, two checkpoints during an
    upload (more than the last checkpoint beside the logged model); with `all`, one per epoch and the model."""
    if keep == "all":
        return (math.ceil(epochs) * CHECKPOINT_BYTES + MODEL_BYTES) * n_params / GB
    return max(CHECKPOINTS_AT_ONCE * CHECKPOINT_BYTES, CHECKPOINT_BYTES + MODEL_BYTES) * n_params / GB


def main(argv: list[str] | None = None) -> None:
    from distill.config.presets import load_preset

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper")
    args = parser.parse_args(argv)
    preset = load_preset(args.preset)
    for keep in ("last", "all"):
        d = sft_disk(preset, keep)
        print(f"keep_checkpoints={keep}: {d['runs']} runs; logged models {d['models_gb']:.0f} GB, checkpoints kept "
              f"{d['checkpoints_gb']:.0f} GB; after the grid {d['store_after_gb']:.0f} GB, at most "
              f"{d['store_peak_gb']:.0f} GB while it runs")


if __name__ == "__main__":
    main()
