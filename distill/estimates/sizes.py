"""Parameter counts and download sizes of the models a preset names, found without downloading anything.

A count comes from PUBLISHED_PARAMS (the paper's models), else from the model's config when it is on this
machine (a folder, or the local Hugging Face cache; counted on the meta device, nothing allocated). A
download is the model's weights as the Hub serves them: WEIGHT_BYTES a parameter, the bf16 safetensors the
paper's models publish; tokenizer and config files (a few MB) are not counted.
"""

from __future__ import annotations

import os
from pathlib import Path

GB = 1e9
WEIGHT_BYTES = 2  # bf16, as the Hub holds every model of the paper
# Parameter counts of the paper's models. Students: computed from the models' config.json (vocabulary,
# hidden size, layers, MLP width, heads; tied embeddings counted once; llm-jp's are untied), except
# sarashina2.2-1b, the model card's rounded 1.4 B. Teachers and translator: the model cards' "Number of
# Parameters" (Qwen2.5: 7.61 B, 14.7 B, 32.5 B, 72.7 B; Llama 3.3 70B, which Swallow continues: 70.6 B).
PUBLISHED_PARAMS = {
    "Qwen/Qwen2.5-0.5B": 494_032_768,
    "Qwen/Qwen2.5-1.5B": 1_543_714_304,
    "sbintuitions/sarashina2.2-1b": 1_400_000_000,
    "llm-jp/llm-jp-3.1-1.8b": 1_867_614_208,
    "Qwen/Qwen2.5-7B-Instruct": 7_610_000_000,
    "Qwen/Qwen2.5-14B-Instruct": 14_700_000_000,
    "Qwen/Qwen2.5-32B-Instruct": 32_500_000_000,
    "Qwen/Qwen2.5-72B-Instruct": 72_700_000_000,
    "tokyotech-llm/Llama-3.3-Swallow-70B-Instruct-v0.4": 70_600_000_000,
}


def count_parameters(model: str) -> int | None:
    """Parameters of a model whose config is on this machine (a folder, or the local Hub cache), counted on
    the meta device; None when the config is not here."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model, local_files_only=True)
        with torch.device("meta"):
            built = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError):
        return None
    return sum(p.numel() for p in built.parameters())  # shared (tied) tensors are yielded once


def parameters(source: str, local: bool = True) -> int | None:
    """A Hub model's parameter count: the table first (no import, no file), then its local config if
    `local`; None for a model neither knows (a run's model, a served name)."""
    if source in PUBLISHED_PARAMS:
        return PUBLISHED_PARAMS[source]
    return count_parameters(source) if local and is_hub_id(source) else None


def is_hub_id(source: str) -> bool:
    """`org/name` on the Hub, not a folder here, a tiny stand-in or an MLflow model."""
    return source.count("/") == 1 and ":" not in source and not Path(source).exists()


def in_local_cache(source: str) -> bool:
    """Whether the Hugging Face cache of this machine holds a snapshot of the model (then nothing is downloaded)."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    root = Path(os.environ.get("HF_HUB_CACHE") or home / "hub")
    snapshots = root / f"models--{source.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def weights_gb(n_params: int | None) -> float | None:
    return None if n_params is None else WEIGHT_BYTES * n_params / GB
