"""transformers backend: batched greedy generation with left padding, for CPU or one GPU."""

from __future__ import annotations

from typing import Sequence

from distill.generation.base import Generation, GenerationConfig, Prompt, truncate_at_stop


def pick_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_tokenizer(source: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class TransformersGenerator:
    name = "transformers"

    def __init__(self, model_source: str, model=None, tokenizer=None, device: str | None = None,
                 dtype: str = "auto", trust_remote_code: bool = False, tokenizer_source: str | None = None,
                 **_ignored):
        import torch
        from transformers import AutoModelForCausalLM

        self.device = device or pick_device()
        self.tokenizer = tokenizer or load_tokenizer(tokenizer_source or model_source, trust_remote_code)
        self.tokenizer.padding_side = "left"
        if model is None:
            torch_dtype = (torch.bfloat16 if self.device == "cuda" else torch.float32) if dtype == "auto" else getattr(torch, dtype)
            model = AutoModelForCausalLM.from_pretrained(
                model_source, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=True
            )
        self.model = model.to(self.device).eval()

    def render(self, prompt: Prompt) -> tuple[str, bool]:
        """Text fed to the model and whether the tokenizer should add its special tokens."""
        if isinstance(prompt, str):
            return prompt, True
        text = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        return text, False  # the chat template already holds BOS and friends

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig, progress: bool = True) -> list[Generation]:
        import torch
        from tqdm.auto import tqdm

        rendered = [self.render(p) for p in prompts]
        # Sorting by length keeps padding, and so wasted compute, low; results go back in order.
        # Chat and plain prompts never share a batch: they differ in whether special tokens are added.
        lengths = [len(self.tokenizer(text, add_special_tokens=special).input_ids) for text, special in rendered]
        order = sorted(range(len(prompts)), key=lambda i: (rendered[i][1], -lengths[i]))
        batches = []
        for i in order:
            if batches and len(batches[-1]) < config.batch_size and rendered[batches[-1][0]][1] == rendered[i][1]:
                batches[-1].append(i)
            else:
                batches.append([i])
        results: list[Generation | None] = [None] * len(prompts)
        eos_ids = self.model.generation_config.eos_token_id
        eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids] if eos_ids is not None else [])
        eos_ids.add(self.tokenizer.eos_token_id)
        bar = tqdm(total=len(prompts), desc=f"generate ({self.device})", unit="prompt", disable=not progress)
        for idx in batches:
            add_special = rendered[idx[0]][1]
            batch = self.tokenizer([rendered[i][0] for i in idx], return_tensors="pt", padding=True,
                                   add_special_tokens=add_special).to(self.device)
            kwargs = dict(
                max_new_tokens=config.max_new_tokens,
                repetition_penalty=config.repetition_penalty,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            if config.temperature > 0:
                kwargs.update(do_sample=True, temperature=config.temperature)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if config.stop:
                kwargs.update(stop_strings=list(config.stop), tokenizer=self.tokenizer)
            with torch.inference_mode():
                out = self.model.generate(**batch, **kwargs)
            new_tokens = out[:, batch.input_ids.shape[1]:].tolist()
            for i, tokens in zip(idx, new_tokens):
                n = next((k + 1 for k, t in enumerate(tokens) if t in eos_ids), len(tokens))
                text = self.tokenizer.decode(tokens[:n], skip_special_tokens=True)
                text, stopped = truncate_at_stop(text, config.stop)
                hit_eos = n < len(tokens) or (tokens and tokens[n - 1] in eos_ids)
                finish = "stop" if (stopped or hit_eos) else "length"
                results[i] = Generation(text=text, n_tokens=n, finish_reason=finish)
            bar.update(len(idx))
        bar.close()
        return results  # type: ignore[return-value]
