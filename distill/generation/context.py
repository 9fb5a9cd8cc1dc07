"""Whether the longest prompt plus max_new_tokens fits a model's context window, checked before generating.

A model asked for more tokens than its positions hold does not stop with an error: transformers generates
on past `max_position_embeddings` (rotary models extrapolate, badly) and a vLLM engine refuses only at its
own start or per request. The user sees minutes of generation and numbers that mean nothing. This reads the
model's config and tokenizer only (no weights), renders the prompts as the backend will, and refuses with
both numbers before any generation starts.
"""

from __future__ import annotations

from collections.abc import Sequence

from distill import DistillError
from distill.config.models import RUN_ID_RE, ModelRef

# Where configs keep their context length, in the order transformers' own models use them.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_length(config) -> tuple[int, str] | None:
    """(tokens, the config key that says so), or None when the config names no limit."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in CONTEXT_KEYS:
        value = getattr(text_config, key, None)
        if isinstance(value, int) and value > 0:
            return value, key
    return None


def prompt_tokens(tokenizer, prompt) -> int:
    """Tokens of one prompt as the generation backends feed it: plain text with the tokenizer's special
    tokens, chat messages through the chat template (which holds them already)."""
    if isinstance(prompt, str):
        return len(tokenizer(prompt).input_ids)
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def _config_and_tokenizer_sources(ref: ModelRef) -> tuple[str, str]:
    """Local folders (or a Hub id) holding the model's config.json and its tokenizer, without its weights."""
    source = ref.source
    if RUN_ID_RE.match(source):
        source = f"runs:/{source}/model"
    if source.startswith("tiny:"):
        from distill.local_models.tiny import tiny_model_dir

        path = str(tiny_model_dir(source))
        return path, path
    if source.startswith(("runs:/", "models:/")):
        return _mlflow_config_and_tokenizer(source)
    return source, source


def _mlflow_config_and_tokenizer(uri: str) -> tuple[str, str]:
    """An MLflow model's folder and tokenizer as the generator will load them: read in place from a local store,
    downloaded once into the model cache from a server (distill.config.models.materialize), so the check leaves
    no copy behind and the generator that follows downloads nothing again."""
    from distill.config.models import materialize

    loadable = materialize(ModelRef(uri, uri))
    return loadable.model, loadable.tokenizer


def check_context(ref: ModelRef, backend: str, prompts: Sequence, max_new_tokens: int,
                  ids: Sequence[str] | None = None) -> int | None:
    """Refuse, naming both numbers, when the longest prompt plus max_new_tokens exceeds the model's context;
    return the longest prompt's length in tokens (None where nothing was checked: a served model, whose
    server knows its own limit and says so per request, or a config that names no limit)."""
    if backend == "openai" or not prompts:
        return None
    from transformers import AutoConfig

    from distill.generation.hf import load_tokenizer

    config_source, tokenizer_source = _config_and_tokenizer_sources(ref)
    found = context_length(AutoConfig.from_pretrained(config_source))
    if found is None:
        return None
    context, key = found
    tokenizer = load_tokenizer(tokenizer_source)
    lengths = [prompt_tokens(tokenizer, p) for p in prompts]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[longest] + max_new_tokens > context:
        which = f"question {ids[longest]}" if ids else f"prompt {longest + 1}"
        room = context - lengths[longest]
        raise DistillError(
            f"max_new_tokens={max_new_tokens} does not fit the context of {ref.name}: its longest prompt ({which}) "
            f"is {lengths[longest]} tokens, and {lengths[longest]} + {max_new_tokens} > {context} tokens "
            f"({key} in its config); "
            + (f"lower max_new_tokens to at most {room}" if room > 0 else "the prompt alone fills the context")
            + " (nothing was generated)")
    return lengths[longest]
