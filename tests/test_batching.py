"""The effective batch: Table 2's 8 examples a step however many processes or GPUs train
(distill/training/batching.py)."""

import pytest

from distill import DistillError
from distill.training.batching import split_batch


@pytest.mark.parametrize("per_device,accumulation,world,expected", [
    (8, 1, 1, (8, 1)),      # the paper on one GPU
    (8, 1, 2, (4, 1)),      # torchrun / accelerate launch, 2 processes
    (8, 1, 4, (2, 1)),      # the README's 4-GPU configs
    (8, 1, 8, (1, 1)),
    (1, 8, 2, (1, 4)),      # per-device 1 stays 1; accumulation makes up the rest
    (4, 3, 2, (3, 2)),      # 12 a step: 6 a process, the largest per-device batch <= 4 that divides it
    (16, 1, 1, (16, 1)),
], ids=["8x1-on-1", "8x1-on-2", "8x1-on-4", "8x1-on-8", "1x8-on-2", "4x3-on-2", "16x1-on-1"])
def test_effective_batch_on_any_process_count(per_device, accumulation, world, expected):
    """The effective batch is the preset's on any number of processes."""
    split = split_batch(per_device, accumulation, world)
    assert (split.per_device, split.accumulation) == expected
    assert split.effective == per_device * accumulation == split.per_device * split.accumulation * world
    assert split.per_device <= per_device  # never more memory a device than asked for


@pytest.mark.parametrize("per_device,accumulation,world,numbers", [
    (8, 1, 3, "the effective batch 8 \\(per_device_train_batch_size 8 x gradient_accumulation_steps 1\\) cannot be "
              "split evenly over 3 processes"),
    (8, 1, 16, "over 16 processes"),
    (2, 3, 4, "effective batch 6 .* over 4 processes"),
], ids=["8x1-on-3", "8x1-on-16", "2x3-on-4"])
def test_indivisible_batch_refused(per_device, accumulation, world, numbers):
    """A batch that does not divide over the processes is refused with the numbers."""
    with pytest.raises(DistillError, match=numbers) as e:
        split_batch(per_device, accumulation, world)
    assert "\n" not in str(e.value)


def test_four_gpus_one_process_trains_on_one(tiny_student, tmp_path, caplog):
    """A process that sees four GPUs trains on one, with the effective batch.

    A plain process (no launcher) on a node with 4 GPUs: HF Trainer would take 8 x 4 examples a step
    through nn.DataParallel, which TRL's SFTTrainer refuses outright (a ValueError, so the run failed). No GPU
    here: `_n_gpu`, what TrainingArguments sets from torch.cuda.device_count(), is the one value given."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from distill.training.batching import check_trainer_batch, split_for

    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, gradient_accumulation_steps=1,
                     use_cpu=True, report_to="none")
    args._n_gpu = 4
    assert args.train_batch_size * args.gradient_accumulation_steps * args.world_size == 32  # what it was
    with pytest.raises(ValueError, match="does not support `nn.DataParallel`"):  # what happened before
        SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_student), args=args,
                   train_dataset=Dataset.from_list([{"prompt": "問題", "completion": "解答"}] * 8),
                   processing_class=AutoTokenizer.from_pretrained(tiny_student))
    with caplog.at_level("WARNING", logger="distill"):
        split = split_for(args, {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1})
    assert (split.per_device, split.accumulation, split.world_size, args.n_gpu) == (8, 1, 1, 1)
    assert "sees 4 GPUs" in caplog.text and "torchrun --nproc_per_node 4" in caplog.text
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_student), args=args,
                         train_dataset=Dataset.from_list([{"prompt": "問題", "completion": "解答"}] * 8),
                         processing_class=AutoTokenizer.from_pretrained(tiny_student))
    assert trainer.get_total_train_batch_size(args) == 8
    check_trainer_batch(trainer, split)  # passes
    args.gradient_accumulation_steps = 2  # what a parallelism setting that doubles the count would do
    with pytest.raises(DistillError, match="would take 16 examples per optimizer step, not the effective batch 8"):
        check_trainer_batch(trainer, split)
