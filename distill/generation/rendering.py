"""Prompts as a Hugging Face tokenizer sees them: what the transformers backend feeds its model, and how
long each prompt is for vLLM, which renders chat prompts with the same template and tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

from distill.generation.base import Prompt

# Tokens beyond the longest prompt plus max_new_tokens: vLLM renders the chat template itself, with the
# same template and tokenizer as `prompt_lengths`; the margin absorbs any difference of a few tokens.
CONTEXT_MARGIN = 64


def render(tokenizer, prompt: Prompt) -> tuple[str, bool]:
    """Text fed to the model and whether the tokenizer should add its special tokens (plain text: yes, as
    vLLM's `generate` does; chat: no, the template already holds BOS and friends, as vLLM's `chat` does)."""
    if isinstance(prompt, str):
        return prompt, True
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False), False


def rendered_lengths(tokenizer, rendered: Sequence[tuple[str, bool]]) -> list[int]:
    """Tokens per rendered prompt (`render`'s text and special-token flag), in order."""
    lengths = [0] * len(rendered)
    for special in (True, False):
        idx = [i for i, (_, s) in enumerate(rendered) if s is special]
        if idx:
            ids = tokenizer([rendered[i][0] for i in idx], add_special_tokens=special).input_ids
            for i, tokens in zip(idx, ids):
                lengths[i] = len(tokens)
    return lengths


def prompt_lengths(tokenizer, prompts: Sequence[Prompt]) -> list[int]:
    """Tokens per prompt after the chat template, in the prompts' order."""
    return rendered_lengths(tokenizer, [render(tokenizer, p) for p in prompts])


def context_length(longest_prompt: int, max_new_tokens: int, margin: int = CONTEXT_MARGIN) -> int:
    """vLLM's `max_model_len` for prompts of at most `longest_prompt` tokens and answers of `max_new_tokens`
    (here, not in the vLLM backend, so that a phase's reuse key covers vLLM's module only when it runs vLLM)."""
    return longest_prompt + max_new_tokens + margin
