"""vLLM backend: offline `LLM` with tensor parallelism for the 70B-class models. GPU only.

vLLM is imported only when this backend is chosen (`pip install .[vllm]`); the request
building below is plain Python so that it is tested without a GPU.
"""

from __future__ import annotations

from typing import Sequence

from distill import DistillError
from distill.generation.base import Generation, GenerationConfig, Prompt, truncate_at_stop


def sampling_kwargs(config: GenerationConfig) -> dict:
    """vLLM SamplingParams arguments that mean what GenerationConfig means."""
    kwargs = dict(max_tokens=config.max_new_tokens, temperature=config.temperature,
                  repetition_penalty=config.repetition_penalty, seed=config.seed)
    if config.stop:
        kwargs["stop"] = list(config.stop)
    return kwargs


def split_by_kind(prompts: Sequence[Prompt]) -> tuple[list[int], list[int]]:
    """Indices of plain-text prompts and of chat prompts: vLLM takes them through different calls."""
    plain = [i for i, p in enumerate(prompts) if isinstance(p, str)]
    chat = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    return plain, chat


def to_generation(request_output, stop: Sequence[str]) -> Generation:
    completion = request_output.outputs[0]
    text, _ = truncate_at_stop(completion.text, stop)
    return Generation(text=text, n_tokens=len(completion.token_ids), finish_reason=completion.finish_reason or "stop")


class VLLMGenerator:
    name = "vllm"

    def __init__(self, model_source: str, tensor_parallel_size: int = 1, tokenizer_source: str | None = None,
                 trust_remote_code: bool = False, gpu_memory_utilization: float = 0.9, max_model_len: int | None = None,
                 **_ignored):
        try:
            from vllm import LLM
        except ImportError:
            raise DistillError("backend=vllm needs vLLM and a GPU: pip install -e '.[vllm]'") from None
        self.llm = LLM(model=model_source, tokenizer=tokenizer_source or model_source,
                       tensor_parallel_size=int(tensor_parallel_size), trust_remote_code=trust_remote_code,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, dtype="auto")

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig, progress: bool = True) -> list[Generation]:
        from vllm import SamplingParams

        params = SamplingParams(**sampling_kwargs(config))
        results: list[Generation | None] = [None] * len(prompts)
        plain, chat = split_by_kind(prompts)
        if plain:
            outs = self.llm.generate([prompts[i] for i in plain], params, use_tqdm=progress)
            for i, o in zip(plain, outs):
                results[i] = to_generation(o, config.stop)
        if chat:
            outs = self.llm.chat([prompts[i] for i in chat], params, use_tqdm=progress)
            for i, o in zip(chat, outs):
                results[i] = to_generation(o, config.stop)
        return results  # type: ignore[return-value]
