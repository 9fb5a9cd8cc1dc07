"""Tiny Qwen2 models built on this machine: the `offline` preset's teachers and students, and the tests'.

A byte-level BPE tokenizer trained on the shipped Japanese and English text and a few-layer
Qwen2 config, saved with `save_pretrained`: a real transformers model folder, built in seconds,
no Hub involved. The weights are random (seeded by name), so the answers are noise, but every
code path that a real model takes is taken.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from distill.config.environment import distill_home
from distill.data.prompts import RESOURCES, mgsm_exemplars

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2.5's template, trimmed to what the study uses (system + user turns, generation prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BUILD_VERSION = 3
# Heads of 64 dimensions: the smallest that vLLM's CPU attention runs (32 is listed but fails there: it
# supports 64, 80, 96, 112, 128, ...), and vLLM's Qwen2 takes hidden_size / heads, never config.head_dim.
SIZES = {  # hidden, layers, heads, kv heads, intermediate
    "small": (128, 2, 2, 2, 256),
    "medium": (128, 3, 2, 1, 256),
}


def cache_root() -> Path:
    return distill_home() / "tiny"


def _corpus() -> list[str]:
    lines = []
    with open(RESOURCES / "mgsm_ja.tsv", encoding="utf-8") as f:
        lines += [line.split("\t")[0] for line in f if line.strip()]
    for ex in mgsm_exemplars():
        lines += [ex["question"], ex["answer"], f"解答: {ex['answer_number']}"]
    with open(RESOURCES / "gsm8k_train_sample.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            lines += [row["question"], row["answer"]]
    lines += ["ステップごとに考えて答えを導いてください。", "0 1 2 3 4 5 6 7 8 9 10 100 1000 , . -"]
    return lines


def build_tokenizer(vocab_size: int = 1000):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(out_dir: str | Path, name: str = "tiny", size: str = "small", vocab_size: int = 1000,
                arch: str = "qwen2", tokenizer=None, chat_template: bool = True) -> Path:
    """Build and save a tiny causal LM (Qwen2 or Llama) with its tokenizer; weights seeded by `name`."""
    import copy

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    tokenizer = copy.deepcopy(tokenizer) if tokenizer is not None else build_tokenizer(vocab_size)
    if not chat_template:
        tokenizer.chat_template = None
    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[arch]
    hidden, layers, heads, kv_heads, inter = SIZES[size]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=inter,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=0.3,  # wide enough that greedy decoding wanders instead of repeating one token
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")],
        pad_token_id=tokenizer.pad_token_id,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def tiny_model_dir(spec: str) -> Path:
    """`tiny:<name>` -> a built model folder, built once per machine and reused."""
    name = spec.removeprefix("tiny:")
    size = "medium" if name.endswith(("72b", "32b")) else "small"
    shape = "-".join(map(str, SIZES[size]))  # a changed shape is another model, never an old one reused
    target = cache_root() / f"{name}-v{BUILD_VERSION}-{shape}"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build_model(tmp, name=name, size=size)
        try:
            tmp.rename(target)
        except OSError:  # another process built it first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
