"""transformers backend: batched greedy generation with left padding, on a CPU, one GPU, or a model too large for one
GPU spread over the step's GPUs (load_placement)."""

from __future__ import annotations

from collections.abc import Sequence

from distill.generation.base import Generation, GenerationConfig, Prompt, truncate_at_stop
from distill.generation.rendering import render, rendered_lengths


def pick_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_placement(device: str, n_visible_gpus: int) -> dict:
    """from_pretrained arguments that place the model. A step given several GPUs (the 72B teacher and the 70B
    translator at their tensor_parallel_size) gets accelerate's big-model placement over all of them
    (device_map="auto", its layers split in order): a whole 72B model `.to("cuda")` fits no one GPU. Otherwise
    nothing: the model loads on the CPU and goes whole to `device`."""
    if device == "cuda" and n_visible_gpus > 1:
        return {"device_map": "auto"}
    return {}


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
        placement = {}
        if model is None:
            torch_dtype = ((torch.bfloat16 if self.device == "cuda" else torch.float32) if dtype == "auto"
                           else getattr(torch, dtype))
            placement = load_placement(self.device, torch.cuda.device_count() if self.device == "cuda" else 0)
            model = AutoModelForCausalLM.from_pretrained(
                model_source, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=True, **placement
            )
        # placed over several GPUs, the model stays where accelerate put it; inputs go to its first device
        self.model = (model if placement else model.to(self.device)).eval()

    def render(self, prompt: Prompt) -> tuple[str, bool]:
        """Text fed to the model and whether the tokenizer should add its special tokens."""
        return render(self.tokenizer, prompt)

    def batches(self, rendered: list[tuple[str, bool]], batch_size: int) -> list[list[int]]:
        """Prompt indices in batches, longest first so that padding (wasted compute) stays low; chat and plain
        prompts never share a batch: they differ in whether special tokens are added."""
        lengths = rendered_lengths(self.tokenizer, rendered)
        order = sorted(range(len(rendered)), key=lambda i: (rendered[i][1], -lengths[i]))
        batches: list[list[int]] = []
        for i in order:
            if batches and len(batches[-1]) < batch_size and rendered[batches[-1][0]][1] == rendered[i][1]:
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches

    def decoding(self, config: GenerationConfig, attention_mask) -> dict:
        """`generate` arguments for `config`. The repetition penalty is ours, never transformers' own, which
        counts the left padding (the EOS id) in transformers < 5.24: EOS would be penalised in padded rows only."""
        from transformers import LogitsProcessorList

        kwargs = dict(max_new_tokens=config.max_new_tokens, repetition_penalty=1.0,
                      pad_token_id=self.tokenizer.pad_token_id)
        if config.repetition_penalty != 1.0:
            padding = (attention_mask == 0).sum(dim=1)
            kwargs["logits_processor"] = LogitsProcessorList([
                RepetitionPenaltyOverRealTokens(config.repetition_penalty, padding)])
        if config.temperature > 0:
            kwargs.update(do_sample=True, temperature=config.temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if config.stop:
            kwargs.update(stop_strings=list(config.stop), tokenizer=self.tokenizer)
        return kwargs

    def eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        return ids | {self.tokenizer.eos_token_id}

    def stop_end(self, tokens: list[int], stop: Sequence[str]) -> int:
        """How many tokens it took to complete the first stop string, which `tokens` holds. `generate` pads a row
        that met a stop string with pad_token_id, which is often the EOS id: those tokens were never generated
        (vLLM's token_ids end at the stop string too). Whether a prefix holds a stop string only turns true as
        the prefix grows, so a binary search finds the end in ~10 decodes."""
        low, high = 1, len(tokens)
        while low < high:
            mid = (low + high) // 2
            if truncate_at_stop(self.tokenizer.decode(tokens[:mid], skip_special_tokens=True), stop)[1]:
                high = mid
            else:
                low = mid + 1
        return low

    def finished(self, tokens: list[int], eos_ids: set[int], stop: Sequence[str]) -> Generation:
        """The new tokens of one row up to its first EOS or stop string, as text cut at the first stop string."""
        n = next((k + 1 for k, t in enumerate(tokens) if t in eos_ids), len(tokens))
        text, stopped = truncate_at_stop(self.tokenizer.decode(tokens[:n], skip_special_tokens=True), stop)
        hit_eos = n < len(tokens) or bool(tokens) and tokens[n - 1] in eos_ids
        if stopped:
            n = self.stop_end(tokens[:n], stop)
        return Generation(text=text, n_tokens=n, finish_reason="stop" if (stopped or hit_eos) else "length",
                          token_ids=list(tokens[:n]))

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig, progress: bool = True) -> list[Generation]:
        import torch
        from tqdm.auto import tqdm

        rendered = [self.render(p) for p in prompts]
        results: list[Generation | None] = [None] * len(prompts)
        eos_ids = self.eos_ids()
        bar = tqdm(total=len(prompts), desc=f"generate ({self.device})", unit="prompt", disable=not progress)
        for idx in self.batches(rendered, config.batch_size):
            batch = self.tokenizer([rendered[i][0] for i in idx], return_tensors="pt", padding=True,
                                   add_special_tokens=rendered[idx[0]][1]).to(self.model.device)
            with torch.inference_mode():
                out = self.model.generate(**batch, **self.decoding(config, batch.attention_mask))
            for i, tokens in zip(idx, out[:, batch.input_ids.shape[1]:].tolist()):
                results[i] = self.finished(tokens, eos_ids, config.stop)
            bar.update(len(idx))
        bar.close()
        return results  # type: ignore[return-value]


    def close(self) -> None:
        """Drop the model; a GPU's cached blocks go back to the driver."""
        import torch

        self.model = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()


class RepetitionPenaltyOverRealTokens:
    """transformers' (and vLLM's) repetition penalty over each row's prompt and new tokens, never its left
    padding: a token seen there has its logit divided by `penalty` (multiplied when negative), once."""

    def __init__(self, penalty: float, padding):
        self.penalty, self.padding = float(penalty), padding

    def __call__(self, input_ids, scores):
        import torch

        vocab = scores.shape[-1]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        padded = positions[None, :] < self.padding.to(input_ids.device)[:, None]
        ids = input_ids.clamp(max=vocab).masked_fill(padded, vocab)  # `vocab`: a column dropped below
        seen = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
        seen = seen.scatter(1, ids, True)[:, :vocab]
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen, penalised, scores)
