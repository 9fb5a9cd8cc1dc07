"""Glue every generating phase shares: pick the backend for a model and run prompts through it."""

from __future__ import annotations

import logging
import time
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


def open_generator(ref: ModelRef, backend: str, base_url: str | None = None,
                   tensor_parallel_size: int | None = None, trust_remote_code: bool = False) -> Generator:
    """A ready generator; MLflow and tiny models are downloaded or built first."""
    check_backend(backend)
    if backend == "openai":
        # The server names the model; for preset names that is the Hub id it was started with.
        return make_generator("openai", ref.source if not ref.source.startswith("tiny:") else ref.name,
                              base_url=base_url)
    from distill.models import materialize

    loadable = materialize(ref)
    t0 = time.perf_counter()
    gen = make_generator(backend, loadable.model, tokenizer_source=loadable.tokenizer,
                         tensor_parallel_size=tensor_parallel_size or ref.tensor_parallel_size,
                         trust_remote_code=trust_remote_code)
    console.info(f"loaded {ref.name} ({loadable.model}) with {backend} in {time.perf_counter() - t0:.1f}s")
    return gen


def lazy_generate(ref: ModelRef, backend: str, options: GenerationOptions, config: GenerationConfig):
    """`generate(prompts)` that loads the model on its first call: a fully resumed run loads none."""
    generator = None

    def generate(prompts: Sequence[Prompt]) -> list:
        nonlocal generator
        generator = generator or open_generator(ref, backend, options.base_url, options.tensor_parallel_size)
        return generator.generate(prompts, config)

    return generate


def timed_generate(gen: Generator, prompts: Sequence[Prompt], config: GenerationConfig) -> tuple[list, dict[str, Any]]:
    t0 = time.perf_counter()
    outs = gen.generate(prompts, config)
    seconds = time.perf_counter() - t0
    tokens = sum(o.n_tokens for o in outs)
    return outs, {"generation_seconds": seconds, "output_tokens": tokens,
                  "tokens_per_second": tokens / seconds if seconds > 0 else 0.0}
