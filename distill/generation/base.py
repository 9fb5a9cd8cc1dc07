"""The generation interface shared by every backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from distill import DistillError

Prompt = str | list  # plain text, or chat messages [{"role": ..., "content": ...}]


@dataclass(frozen=True)
class GenerationConfig:
    """Greedy decoding unless temperature > 0, as in the paper."""

    max_new_tokens: int = 1024
    repetition_penalty: float = 1.0
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise DistillError(f"max_new_tokens must be positive (got {self.max_new_tokens})")
        if self.batch_size <= 0:
            raise DistillError(f"batch_size must be positive (got {self.batch_size})")


@dataclass
class Generation:
    text: str
    n_tokens: int
    finish_reason: str = "stop"  # `stop` (EOS or a stop string) or `length`
    usage: dict = field(default_factory=dict)
    token_ids: list = field(default_factory=list)  # the new tokens as generated (a server's backend: none)


class Generator(Protocol):
    name: str

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig, progress: bool = True) -> list[Generation]:
        """One Generation per prompt, in the prompts' order."""

    def close(self) -> None:
        """Give back what the backend holds (a vLLM engine's GPU memory, a client's connections); idempotent."""


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut at the first stop string (backends may overshoot by a few tokens)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)

