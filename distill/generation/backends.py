"""Backends by name: each is a "module:Class" string, imported only when chosen.

The names are strings, not imports, so that nothing here imports a backend: the backends import
`base`, this module imports none of them (no import circle), vLLM is loaded only for backend=vllm,
and a phase's reuse key covers only the backend it runs with (cache_keys.BACKEND_MODULES).
A new backend is one line here.
"""

from __future__ import annotations

import importlib

from distill import DistillError
from distill.generation.base import Generator

REGISTRY = {
    "transformers": "distill.generation.hf:TransformersGenerator",
    "vllm": "distill.generation.vllm_backend:VLLMGenerator",
    "openai": "distill.generation.openai_backend:OpenAIGenerator",
}
BACKENDS = tuple(REGISTRY)


def check_backend(backend: str) -> str:
    """`backend` if it is a known name, else the DistillError that names the choices."""
    if backend not in REGISTRY:
        raise DistillError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def backend_module(backend: str) -> str:
    """The module a backend lives in (what its import would load)."""
    return REGISTRY[check_backend(backend)].partition(":")[0]


def make_generator(backend: str, model_source: str, **options) -> Generator:
    """The backend by name; `model_source` is a local folder or Hub id (or a served model name)."""
    module, _, cls = REGISTRY[check_backend(backend)].partition(":")
    return getattr(importlib.import_module(module), cls)(model_source, **options)
