"""OpenAI-compatible backend: `vllm serve`, a hosted API, anything that speaks the protocol.

The `openai` client reads OPENAI_BASE_URL and OPENAI_API_KEY itself; `base_url` overrides.
Requests run concurrently; the client retries 429s and 5xx with exponential backoff and
honours Retry-After.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from distill import DistillError
from distill.generation.base import Generation, GenerationConfig, Prompt, truncate_at_stop


def make_client(base_url: str | None = None, max_retries: int = 6, timeout: float = 600.0, http_client=None):
    """An `openai.OpenAI` client; a local server without OPENAI_API_KEY gets a dummy key."""
    import openai

    api_key = os.environ.get("OPENAI_API_KEY")
    if not api_key:
        if not (base_url or os.environ.get("OPENAI_BASE_URL")):
            raise DistillError("the openai backend needs OPENAI_API_KEY, or a base_url / OPENAI_BASE_URL of a server")
        api_key = "EMPTY"  # local servers such as `vllm serve` accept any key
    return openai.OpenAI(base_url=base_url or None, api_key=api_key, max_retries=max_retries, timeout=timeout,
                         http_client=http_client)


def request_kwargs(config: GenerationConfig) -> dict:
    kwargs = dict(max_tokens=config.max_new_tokens, temperature=config.temperature, seed=config.seed)
    if config.stop:
        kwargs["stop"] = list(config.stop)[:4]  # the OpenAI API takes at most four
    if config.repetition_penalty != 1.0:
        kwargs["extra_body"] = {"repetition_penalty": config.repetition_penalty}  # vLLM's extension
    return kwargs


class OpenAIGenerator:
    name = "openai"

    def __init__(self, model_source: str, base_url: str | None = None, concurrency: int = 16,
                 max_retries: int = 6, timeout: float = 600.0, **_ignored):
        self.model = model_source
        self.client = make_client(base_url, max_retries=max_retries, timeout=timeout)
        self.concurrency = max(1, int(concurrency))

    def _one(self, prompt: Prompt, config: GenerationConfig) -> Generation:
        kwargs = request_kwargs(config)
        if isinstance(prompt, str):
            resp = self.client.completions.create(model=self.model, prompt=prompt, **kwargs)
            text, finish = resp.choices[0].text, resp.choices[0].finish_reason
        else:
            resp = self.client.chat.completions.create(model=self.model, messages=prompt, **kwargs)
            text, finish = resp.choices[0].message.content or "", resp.choices[0].finish_reason
        text, _ = truncate_at_stop(text, config.stop)
        usage = resp.usage.model_dump() if resp.usage else {}
        n_tokens = usage.get("completion_tokens") or 0
        return Generation(text=text, n_tokens=n_tokens, finish_reason=finish or "stop", usage=usage)

    def generate(self, prompts: Sequence[Prompt], config: GenerationConfig, progress: bool = True) -> list[Generation]:
        import openai
        from tqdm.auto import tqdm

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = [pool.submit(self._one, p, config) for p in prompts]
            results = []
            for f in tqdm(futures, desc=f"generate ({self.model})", unit="prompt", disable=not progress):
                try:
                    results.append(f.result())
                except openai.APIConnectionError as e:
                    raise DistillError(f"cannot reach the OpenAI-compatible server at {self.client.base_url}: {e}") from None
                except openai.APIStatusError as e:
                    raise DistillError(f"the server at {self.client.base_url} answered {e.status_code}: {e.message}") from None
        return results
