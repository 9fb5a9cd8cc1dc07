"""The effective batch of one optimizer step, kept at the preset's value whatever runs the training.

Table 2's batch (per-device 8 x accumulation 1 = 8 examples a step) is what `per_device_train_batch_size`
x `gradient_accumulation_steps` say on one device. HF Trainer multiplies it by every replica it trains
on (transformers 5.24, `TrainingArguments.train_batch_size` and `Trainer.get_total_train_batch_size`):
examples a step = per_device x max(1, n_gpu) x accumulation x world_size, where `world_size` is the
number of processes (torchrun, `accelerate launch`) and `n_gpu` the GPUs one plain process would wrap
in `nn.DataParallel` (1 under a launcher, 0 on a CPU). TRL's SFTTrainer refuses nn.DataParallel (its
fused LM head is bound to the original model), so a plain process that sees several GPUs trains on the
first one, as Trainer itself does for a model split with `device_map`. `split_batch` divides the
preset's batch over the processes; a batch that does not divide is refused with the numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from distill import DistillError

console = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchSplit:
    """How one optimizer step's examples are spread over the processes of a launch."""

    effective: int             # examples per optimizer step, every process together (the preset's batch)
    per_device: int            # per_device_train_batch_size given to the Trainer
    accumulation: int          # gradient_accumulation_steps given to the Trainer
    world_size: int            # processes, one device each

    def params(self) -> dict:
        """What a run logs: the batch it meant and how this launch reached it."""
        return {"effective_batch_size": self.effective, "world_size": self.world_size,
                "per_device_train_batch_size_used": self.per_device,
                "gradient_accumulation_steps_used": self.accumulation}


def split_batch(per_device: int, accumulation: int, world_size: int = 1) -> BatchSplit:
    """The preset's batch (per_device x accumulation, as on one device) over world_size processes: the
    largest per-device batch not above `per_device` that divides each process's share, and the
    accumulation that makes up the rest (8 x 1 on 2 processes: 4 x 1; 1 x 8 on 2: 1 x 4)."""
    effective = per_device * accumulation
    if world_size < 1:
        raise DistillError(f"cannot train on {world_size} processes")
    if effective % world_size:
        raise DistillError(
            f"the effective batch {effective} (per_device_train_batch_size {per_device} x gradient_accumulation_steps "
            f"{accumulation}) cannot be split evenly over {world_size} processes; launch a number of processes that "
            f"divides {effective}, or choose per_device_train_batch_size and gradient_accumulation_steps whose "
            f"product {world_size} divides")
    share = effective // world_size
    device = max(d for d in range(1, min(per_device, share) + 1) if share % d == 0)
    return BatchSplit(effective=effective, per_device=device, accumulation=share // device, world_size=world_size)


def split_settings(settings: dict, world_size: int) -> BatchSplit:
    """`split_batch` of the batch these SFTConfig settings ask for (TRL's defaults where they give none)."""
    from distill.config.sft_checks import setting

    return split_batch(setting(settings, "per_device_train_batch_size"),
                       setting(settings, "gradient_accumulation_steps"), world_size)


def split_for(args, h: dict) -> BatchSplit:
    """`split_batch` over the processes these TrainingArguments train on (`world_size`, the value the Trainer
    multiplies by), written into them; a plain process that sees several GPUs is held to one."""
    if args.n_gpu > 1:
        console.warning(f"sft: this process sees {args.n_gpu} GPUs and runs under no launcher: it trains on "
                        f"{args.device} alone (TRL's SFTTrainer cannot use nn.DataParallel); `torchrun "
                        f"--nproc_per_node {args.n_gpu}` trains on all of them with the same effective batch")
        args._n_gpu = 1  # what TrainingArguments sets when it sees one GPU
    split = split_settings(h, args.world_size)
    args.per_device_train_batch_size = split.per_device
    args.gradient_accumulation_steps = split.accumulation
    return split


def check_trainer_batch(trainer, split: BatchSplit) -> None:
    """The Trainer's own count of examples per step must be the split's; anything that multiplies it further
    (tensor, context or sequence parallelism from an accelerate config) is refused before a step is taken."""
    total = trainer.get_total_train_batch_size(trainer.args)
    if total != split.effective:
        raise DistillError(f"the Trainer would take {total} examples per optimizer step, not the effective batch "
                           f"{split.effective} (per device {split.per_device} x accumulation {split.accumulation} x "
                           f"{split.world_size} processes); a parallelism setting of the launch changes it")
