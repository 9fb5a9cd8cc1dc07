"""Glue every generating phase shares: pick the backend for a model and run prompts through it."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Sequence

from distill.checks import check
from distill.config import ModelRef
from distill.generation import GenerationConfig, Generator, Prompt, check_backend, make_generator

console = logging.getLogger(__name__)


@dataclass(kw_only=True)
class GenerationOptions:
    """Parameters every generating phase takes; empty means the preset's."""

    backend: str = ""
    max_new_tokens: int | None = None
    batch_size: int | None = None
    base_url: str | None = None            # the server for backend=openai (else OPENAI_BASE_URL)
    tensor_parallel_size: int | None = None


@dataclass(frozen=True)
class EngineSizing:
    """What a vLLM engine is sized for: every prompt of the step (not one shard's), the answer length, and
    the preset's share of GPU memory (`vllm.gpu_memory_utilization`)."""

    prompts: Sequence[Prompt]
    max_new_tokens: int
    gpu_memory_utilization: float


def generation_config(preset, max_new_tokens: int | None, batch_size: int | None,
                      length_key: str = "max_new_tokens", **extra) -> GenerationConfig:
    """Explicit values, else the preset's `generation` section (an explicit 0 is refused, never the default)."""
    defaults = preset.generation
    return GenerationConfig(
        max_new_tokens=check("max_new_tokens",
                             max_new_tokens if max_new_tokens is not None else getattr(defaults, length_key)),
        batch_size=check("batch_size", batch_size if batch_size is not None else defaults.batch_size),
        **extra,
    )


def engine_sizing(preset, prompts: Sequence[Prompt], config: GenerationConfig) -> EngineSizing:
    return EngineSizing(prompts, config.max_new_tokens, preset.vllm.gpu_memory_utilization)


def vllm_engine_options(sizing: EngineSizing, tokenizer_source: str, trust_remote_code: bool = False) -> dict:
    """`max_model_len` for the longest prompt (in tokens, after the chat template) plus the longest answer,
    and the memory share; logged as params of the active run."""
    from distill.generation.hf import load_tokenizer
    from distill.generation.rendering import context_length, prompt_lengths

    longest = max(prompt_lengths(load_tokenizer(tokenizer_source, trust_remote_code), sizing.prompts), default=0)
    options = {"max_model_len": context_length(longest, sizing.max_new_tokens),
               "gpu_memory_utilization": sizing.gpu_memory_utilization}
    console.info(f"vLLM engine: max_model_len {options['max_model_len']} (longest prompt {longest} tokens + "
                 f"max_new_tokens {sizing.max_new_tokens} + margin), gpu_memory_utilization "
                 f"{options['gpu_memory_utilization']}")
    _log_params({f"vllm_{k}": v for k, v in options.items()})
    return options


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
    from distill.models import materialize

    loadable = materialize(ref)
    options = {}
    if backend == "vllm":
        if sizing is None:
            raise ValueError("backend=vllm needs the step's prompts to size its engine (sizing=...)")
        options = vllm_engine_options(sizing, loadable.tokenizer, trust_remote_code)
    t0 = time.perf_counter()
    gen = make_generator(backend, loadable.model, tokenizer_source=loadable.tokenizer,
                         tensor_parallel_size=tensor_parallel_size or ref.tensor_parallel_size,
                         trust_remote_code=trust_remote_code, **options)
    console.info(f"loaded {ref.name} ({loadable.model}) with {backend} in {time.perf_counter() - t0:.1f}s")
    return gen


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
