"""vLLM backend: offline `LLM` with tensor parallelism for the 70B-class models. GPU only.

vLLM is imported only when this backend is chosen (`pip install .[vllm]`); the request building below
is plain Python so that it is tested without a GPU. The engine is sized for the step's prompts
(`max_model_len`): left to itself vLLM reserves KV cache for the model's whole window (32k tokens for
Qwen2.5), and the 32B teacher on one 80 GB GPU would likely not start. `close()` shuts the engine down.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Sequence

from distill import DistillError
from distill.generation.base import Generation, GenerationConfig, Prompt, truncate_at_stop
from distill.generation.rendering import CONTEXT_MARGIN, context_length  # noqa: F401  (the engine's size)

console = logging.getLogger(__name__)
# The oldest Linux driver for each CUDA major (NVIDIA's CUDA compatibility guide, minor version compatibility).
MIN_DRIVER = {12: "525", 13: "580"}


def engine_kwargs(model: str, tokenizer: str | None = None, tensor_parallel_size: int = 1,
                  trust_remote_code: bool = False, gpu_memory_utilization: float | None = None,
                  max_model_len: int | None = None) -> dict:
    """`LLM(...)` arguments (each a field of vLLM's EngineArgs); a None leaves vLLM's default."""
    kwargs = dict(model=model, tokenizer=tokenizer or model, tensor_parallel_size=int(tensor_parallel_size),
                  trust_remote_code=trust_remote_code, dtype="auto")
    if gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = float(gpu_memory_utilization)
    if max_model_len is not None:
        kwargs["max_model_len"] = int(max_model_len)
    return kwargs


def sampling_kwargs(config: GenerationConfig) -> dict:
    """vLLM SamplingParams arguments that mean what GenerationConfig means."""
    kwargs = dict(max_tokens=config.max_new_tokens, temperature=config.temperature,
                  repetition_penalty=config.repetition_penalty, seed=config.seed)
    if config.stop:
        kwargs["stop"] = list(config.stop)
    return kwargs


def split_by_kind(prompts: Sequence[Prompt]) -> tuple[list[int], list[int]]:
    """Indices of plain-text prompts and of chat prompts: vLLM takes them through different calls."""
    plain = [i for i, p in enumerate(prompts) if isinstance(p, str)]
    chat = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    return plain, chat


def to_generation(request_output, stop: Sequence[str]) -> Generation:
    completion = request_output.outputs[0]
    text, _ = truncate_at_stop(completion.text, stop)
    return Generation(text=text, n_tokens=len(completion.token_ids), finish_reason=completion.finish_reason or "stop")


def nvidia_driver() -> str | None:
    """The driver version nvidia-smi reports, or None (no nvidia-smi, no driver, no GPU)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def cuda_problem(torch_version: str, torch_cuda: str | None, cuda_available: bool, driver: str | None) -> str | None:
    """Why this torch cannot run vLLM here, in terms of what to install; None when it can."""
    if cuda_available:
        return None
    if torch_cuda is None:
        return (f"torch {torch_version} is a CPU build; backend=vllm needs the CUDA build vLLM installs "
                "(pip install -e '.[vllm]'; README, 'vLLM, CUDA and the driver')")
    major = int(torch_cuda.split(".")[0])
    need = f"an NVIDIA driver >= {MIN_DRIVER[major]}" if major in MIN_DRIVER else "a matching NVIDIA driver"
    found = f"this machine's driver is {driver}" if driver else "nvidia-smi reports no driver here"
    return (f"torch {torch_version} is built for CUDA {torch_cuda} and sees no GPU: CUDA {major}.x needs {need}, "
            f"{found}. On an older driver install a vLLM built for CUDA 12 (README, 'vLLM, CUDA and the driver')")


def check_cuda() -> None:
    import torch

    available = torch.cuda.is_available()
    problem = cuda_problem(torch.__version__, torch.version.cuda, available, None if available else nvidia_driver())
    if problem:
        raise DistillError(problem)


def shutdown_engine(llm) -> None:
    """Stop an `LLM`'s engine and give its GPU memory back. vLLM 0.33's `LLM` has no shutdown(); this is what
    its AsyncLLM.shutdown does (renderer, then engine core: the EngineCore process and its workers, or the
    in-process executor), then the distributed groups and cached memory of this process. `del llm` alone
    leaves it to finalizers, which a step process that ends in os._exit (multiprocessing) never runs."""
    engine = llm.llm_engine
    for part in ("renderer", "engine_core"):  # an older vLLM (another CUDA's wheel) may lack the renderer
        if getattr(engine, part, None) is not None:
            getattr(engine, part).shutdown()
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    cleanup_dist_env_and_memory()


class VLLMGenerator:
    name = "vllm"

    def __init__(self, model_source: str, tensor_parallel_size: int = 1, tokenizer_source: str | None = None,
                 trust_remote_code: bool = False, gpu_memory_utilization: float | None = None,
                 max_model_len: int | None = None, **_ignored):
        try:
            from vllm import LLM
        except ImportError:
            raise DistillError("backend=vllm needs vLLM and a GPU: pip install -e '.[vllm]'") from None
        check_cuda()
        self.engine_kwargs = engine_kwargs(model_source, tokenizer_source, tensor_parallel_size, trust_remote_code,
                                           gpu_memory_utilization, max_model_len)
        self.llm = LLM(**self.engine_kwargs)

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig, progress: bool = True) -> list[Generation]:
        from vllm import SamplingParams

        params = SamplingParams(**sampling_kwargs(config))
        results: list[Generation | None] = [None] * len(prompts)
        plain, chat = split_by_kind(prompts)
        if plain:
            outs = self.llm.generate([prompts[i] for i in plain], params, use_tqdm=progress)
            for i, o in zip(plain, outs):
                results[i] = to_generation(o, config.stop)
        if chat:
            outs = self.llm.chat([prompts[i] for i in chat], params, use_tqdm=progress)
            for i, o in zip(chat, outs):
                results[i] = to_generation(o, config.stop)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Shut the engine down (idempotent): the next model of the process gets the GPU memory back. A failure
        is a warning: the answers are logged already, and the step's process exits either way."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        try:
            shutdown_engine(llm)
        except Exception as e:
            console.warning(f"the vLLM engine did not shut down cleanly ({type(e).__name__}: {e}); "
                            "its GPU memory goes back when this process exits")
