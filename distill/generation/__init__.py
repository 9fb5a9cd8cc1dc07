"""Text generation behind one interface, three backends.

- `transformers`: batched, left-padded, greedy; CPU or one GPU.
- `vllm`: vLLM's offline `LLM` with tensor parallelism; GPU only, imported only when chosen.
- `openai`: any OpenAI-compatible server (`vllm serve`, a hosted API).

A prompt is either a plain string (base models, students) or a list of chat messages
(instruct teachers, translator); every backend takes both.
"""

from distill.generation.backends import BACKENDS, check_backend, make_generator
from distill.generation.base import Generation, GenerationConfig, Generator, Prompt

__all__ = ["BACKENDS", "GenerationConfig", "Generation", "Generator", "Prompt", "check_backend", "make_generator"]
