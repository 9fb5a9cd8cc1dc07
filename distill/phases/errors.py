"""The `errors` phase: an LLM judge sorts every wrong answer of one evaluation into the paper's categories.

(A) semantic misunderstanding, (B) step missing, (C) calculation error (paper section 4.1). Any
OpenAI-compatible endpoint; JSON-schema structured output where the server takes it, a strict parser
otherwise. Judgments are written to the run in shards: a rerun after a crash or a 429 storm asks only
what is missing. The API key comes from OPENAI_API_KEY and is never logged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from distill import DistillError
from distill.config import params
from distill.config.checks import Rule
from distill.config.params import Default, count_param, param, preset_param, resolve, reuse_param, upstream_param
from distill.config.presets import load_preset
from distill.data.prompts import judge_messages
from distill.data.questions import reference_solutions
from distill.generation.openai_backend import make_client
from distill.tracking import phase_runs, shards
from distill.tracking.lineage import EVAL_SET, INCOMPLETE, SEED, SFT_RUN_ID, STUDENT, TEACHER

console = logging.getLogger(__name__)

CATEGORIES = {"A": "semantic", "B": "step_missing", "C": "calculation"}
JUDGE_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "error_category",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"category": {"type": "string", "enum": list(CATEGORIES)},
                           "reason": {"type": "string"}},
            "required": ["category", "reason"],
            "additionalProperties": False,
        },
    },
}


# A judgment that failed (timeout, retries used up) leaves the run incomplete, which is never reused.
_HOW = "how the judge is asked, not what it answers: a failed judgment leaves the run incomplete, never reused"


@dataclass
class ErrorsParams:
    """Sort the wrong answers of one evaluate run into (A) semantic, (B) step missing, (C) calculation."""

    eval_run: str = upstream_param("the `evaluate` run whose wrong answers are judged")
    preset: str = preset_param()
    judge_model: str = param("", preset="judge.model", help="the judge (the paper: gpt-4o)")
    judge_base_url: str = param("", preset=Default("the preset's `judge.base_url`, else `$OPENAI_BASE_URL`, else "
                                                   "api.openai.com", paths=("judge.base_url",)),
                                help="an OpenAI-compatible server (a local `vllm serve`); the key comes from "
                                     "OPENAI_API_KEY, never from a parameter")
    concurrency: int = count_param(8, "requests at once", unkeyed=_HOW)
    timeout: float = param(60.0, rule=Rule(float, 0, low_open=True, note="seconds"), unkeyed=_HOW,
                           help="seconds to wait for one answer")
    max_retries: int = param(5, rule=Rule(int, 0), unkeyed=_HOW, help="retries of a request (429, 5xx, timeouts)")
    shard_size: int = count_param(32, "judgments per shard of the run's resumable output",
                                  unkeyed="each answer is judged alone: shards cannot change a judgment")
    trace: bool = param(True, unkeyed="MLflow traces of the calls, not the judgments",
                        help="MLflow tracing of every judge call")
    reuse: bool = reuse_param()


def parse_judgment(text: str | None) -> tuple[str | None, str]:
    """(category, reason) from the judge's reply, or (None, why) when it is not one of A/B/C."""
    if not text:
        return None, "empty reply"
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    try:
        obj = json.loads(body)
        if isinstance(obj, dict):
            cat = str(obj.get("category", "")).strip().strip("()").upper()
            if cat in CATEGORIES:
                return cat, str(obj.get("reason", ""))
            return None, f"category {obj.get('category')!r} is not A, B or C"
    except json.JSONDecodeError:
        pass
    m = re.fullmatch(r"\(?([ABC])\)?(?:\s*[:.\-]\s*(.*))?", body, flags=re.S)
    if m:
        return m.group(1), (m.group(2) or "").strip()
    return None, f"unparseable reply: {text[:80]!r}"


class Judge:
    """One OpenAI-compatible client, counting every HTTP status it sees (retries included)."""

    def __init__(self, model: str, base_url: str | None, timeout: float, max_retries: int):
        import openai

        self.model = model
        self.statuses: Counter = Counter()
        self.usage: Counter = Counter()
        self.lock = threading.Lock()
        self.structured = True

        def count(response):
            with self.lock:
                self.statuses[response.status_code] += 1

        self.client = make_client(base_url, max_retries=max_retries, timeout=timeout,
                                  http_client=openai.DefaultHttpxClient(event_hooks={"response": [count]}))

    def ask(self, messages: list[dict]) -> str | None:
        import openai

        kwargs = dict(model=self.model, messages=messages, temperature=0)
        if self.structured:
            try:
                resp = self.client.chat.completions.create(response_format=JUDGE_SCHEMA, **kwargs)
            except openai.BadRequestError as e:  # a server without structured output: fall back, remember
                if "response_format" not in str(e) and "json_schema" not in str(e):
                    raise
                self.structured = False
                resp = self.client.chat.completions.create(**kwargs)
        else:
            resp = self.client.chat.completions.create(**kwargs)
        if resp.usage:
            with self.lock:
                self.usage["prompt_tokens"] += resp.usage.prompt_tokens or 0
                self.usage["completion_tokens"] += resp.usage.completion_tokens or 0
        return resp.choices[0].message.content

    def judge(self, row: dict) -> dict:
        import openai

        messages = judge_messages(row["question"], row.get("reference") or "(no reference solution available)",
                                  row["output"], row["gold"])
        record = {"id": row["id"], "question": row["question"], "output": row["output"], "gold": row["gold"],
                  "extracted": row.get("extracted"), "category": None, "category_name": None, "reason": "",
                  "failure": None}
        try:
            for _attempt in range(2):  # one more try when the reply is garbage
                category, reason = parse_judgment(self.ask(messages))
                if category:
                    return {**record, "category": category, "category_name": CATEGORIES[category], "reason": reason}
            return {**record, "failure": "unparseable", "reason": reason}
        except openai.APITimeoutError:
            return {**record, "failure": "timeout"}
        except openai.RateLimitError:
            return {**record, "failure": "rate_limited"}
        except openai.APIStatusError as e:
            return {**record, "failure": f"http_{e.status_code}"}
        except openai.APIConnectionError:
            return {**record, "failure": "connection"}


API = "api.openai.com"


def resolve_settings(p: ErrorsParams, preset) -> ErrorsParams:
    """The parameters resolved against the preset; `judge_base_url` as the judge is asked (`api.openai.com`
    when no server is named anywhere)."""
    p = resolve(p, preset)
    base_url = p.judge_base_url or preset.judge.base_url or os.environ.get("OPENAI_BASE_URL") or None
    if not os.environ.get("OPENAI_API_KEY") and not (p.judge_base_url or preset.judge.base_url):
        raise DistillError("the error judge needs OPENAI_API_KEY (for api.openai.com or OPENAI_BASE_URL), or "
                           "judge_base_url=<an OpenAI-compatible server> such as a local `vllm serve`")
    return dataclasses.replace(p, judge_base_url=base_url or API)


def reuse_key(p: ErrorsParams, preset) -> dict:
    """The payload of errors(p)'s reuse key (its upstream: the evaluate run id)."""
    return params.key_payload(resolve_settings(p, preset), preset)


def run(p: ErrorsParams) -> str:
    preset = load_preset(p.preset)
    p = resolve_settings(p, preset)            # before any work
    model, base_url = p.judge_model, (None if p.judge_base_url == API else p.judge_base_url)
    eval_run = phase_runs.require_run(p.eval_run, "evaluate", "errors")
    predictions = phase_runs.read_jsonl_artifact(eval_run.info.run_id, "predictions.jsonl")
    wrong = [r for r in predictions if not r["correct"]]
    references = reference_solutions([r["id"] for r in wrong])
    for r in wrong:
        r["reference"] = references.get(r["id"])
    lineage = {k: v for k, v in eval_run.data.tags.items()
               if k in (STUDENT, TEACHER, SEED, SFT_RUN_ID, EVAL_SET)}
    logged = {"preset": preset.name, "judge_model": model, "judge_base_url": p.judge_base_url, "n_wrong": len(wrong)}
    with phase_runs.phase_run("errors", logged, {"eval_run_id": eval_run.info.run_id}, tags=lineage,
                            reuse=p.reuse, key=params.key_payload(p, preset)) as pr:
        if pr.reused:
            return pr.run_id
        import mlflow

        if p.trace:
            mlflow.openai.autolog(log_traces=True, silent=True)
        judge = Judge(model, base_url, p.timeout, p.max_retries)

        def work(chunk: list[dict]) -> list[dict]:
            with ThreadPoolExecutor(max_workers=p.concurrency) as pool:
                return list(pool.map(judge.judge, chunk))

        try:  # a record without a category (the judge failed) is asked again by the next try
            records, reused = shards.generate_in_shards(pr, wrong, work, p.shard_size, "judgments",
                                                        keep=lambda r: r.get("category") is not None)
        finally:
            if p.trace:
                mlflow.openai.autolog(disable=True)
                mlflow.flush_trace_async_logging()  # traces are exported in the background
        judged = [r for r in records if r["category"]]
        counts = Counter(r["category"] for r in judged)
        failures = Counter(r["failure"] for r in records if r["failure"])
        metrics = {"n_wrong": len(wrong), "n_judged": len(judged), "n_failed": sum(failures.values()),
                   "n_resumed": reused, "n_without_reference": sum(not r.get("reference") for r in wrong),
                   "judge_prompt_tokens": judge.usage["prompt_tokens"],
                   "judge_completion_tokens": judge.usage["completion_tokens"],
                   "judge_structured_output": float(judge.structured)}
        for letter, name in CATEGORIES.items():
            metrics[f"errors_{name}"] = counts[letter]
            metrics[f"errors_{name}_frac"] = counts[letter] / len(judged) if judged else 0.0
        for kind, n in failures.items():
            metrics[f"failed_{kind}"] = n
        for status, n in judge.statuses.items():
            metrics[f"judge_http_{status}"] = n
        mlflow.log_metrics(metrics)
        if failures:
            mlflow.set_tag(INCOMPLETE, "true")
            console.info(f"errors: {sum(failures.values())} answers could not be judged "
                         f"({dict(failures)}); run the same command again to ask only those")
        console.info(f"errors: {len(judged)}/{len(wrong)} wrong answers judged: A {counts['A']}, "
                     f"B {counts['B']}, C {counts['C']}; run {pr.run_id}")
        return pr.run_id
