"""OpenAI-compatible backend: `vllm serve`, a hosted API, anything that speaks the protocol.

The `openai` client reads OPENAI_BASE_URL and OPENAI_API_KEY itself; `base_url` overrides.
Requests run concurrently; the client retries 429s and 5xx with exponential backoff and
honours Retry-After.

Every request states its decoding in full (temperature, max tokens, repetition penalty even at
1.0): a server left to fill one in uses the model's own generation config (`vllm serve` applies
Qwen2.5's repetition penalty 1.05), and the backends would no longer decode alike. A server that
refuses the `repetition_penalty` field (a hosted API) applies none, which is 1.0: only then is the
field dropped, and a penalty other than 1.0 such a server cannot honour is an error.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from distill import DistillError
from distill.generation.base import Generation, GenerationConfig, Prompt, truncate_at_stop

console = logging.getLogger(__name__)


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


def request_kwargs(config: GenerationConfig, repetition_penalty: bool = True) -> dict:
    """The decoding of `config`, every setting explicit; `repetition_penalty=False` leaves vLLM's field out."""
    kwargs = dict(max_tokens=config.max_new_tokens, temperature=config.temperature, seed=config.seed)
    if config.stop:
        kwargs["stop"] = list(config.stop)[:4]  # the OpenAI API takes at most four
    if repetition_penalty:
        kwargs["extra_body"] = {"repetition_penalty": config.repetition_penalty}  # vLLM's extension
    return kwargs


def refuses_repetition_penalty(error) -> bool:
    """A 400 that names the field: the server does not know vLLM's extension."""
    return getattr(error, "status_code", None) == 400 and "repetition_penalty" in str(error)


class OpenAIGenerator:
    name = "openai"

    def __init__(self, model_source: str, base_url: str | None = None, concurrency: int = 16,
                 max_retries: int = 6, timeout: float = 600.0, **_ignored):
        self.model = model_source
        self.client = make_client(base_url, max_retries=max_retries, timeout=timeout)
        self.concurrency = max(1, int(concurrency))
        self.send_repetition_penalty = True
        self._lock = threading.Lock()

    def _one(self, prompt: Prompt, config: GenerationConfig) -> Generation:
        import openai

        try:
            return self._request(prompt, config, self.send_repetition_penalty)
        except openai.BadRequestError as e:
            if not (self.send_repetition_penalty and refuses_repetition_penalty(e)):
                raise
            if config.repetition_penalty != 1.0:
                raise DistillError(f"the server at {self.client.base_url} does not take repetition_penalty, so "
                                   f"repetition_penalty={config.repetition_penalty} cannot be applied there; use a "
                                   "vLLM server (or repetition_penalty=1.0)") from None
            with self._lock:
                if self.send_repetition_penalty:
                    self.send_repetition_penalty = False
                    console.warning(f"{self.client.base_url} does not take repetition_penalty; it applies none "
                                    "(= 1.0, as asked), so the field is left out from now on")
            return self._request(prompt, config, False)

    def _request(self, prompt: Prompt, config: GenerationConfig, repetition_penalty: bool) -> Generation:
        kwargs = request_kwargs(config, repetition_penalty)
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
                    raise DistillError(
                        f"cannot reach the OpenAI-compatible server at {self.client.base_url}: {e}"
                    ) from None
                except openai.APIStatusError as e:
                    raise DistillError(
                        f"the server at {self.client.base_url} answered {e.status_code}: {e.message}"
                    ) from None
        return results

    def close(self) -> None:
        self.client.close()
