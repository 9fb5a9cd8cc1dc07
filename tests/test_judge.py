"""The error judge against a real local HTTP server, failures included: nothing lost, every failure counted."""

import json

import mlflow
import pytest

from distill import DistillError
from distill.phases.errors import ErrorsParams, parse_judgment, run as errors
from distill.phases.evaluate import EvaluateParams, run as evaluate
from tests.openai_server import OpenAIStub


def judge_by_question(kind, body):
    """A deterministic judge: the category follows the question number (gsm8k-test-000N)."""
    prompt = body["messages"][-1]["content"]
    letter = "ABC"[sum(map(ord, prompt)) % 3]
    return {"category": letter, "reason": "stub"}


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    """One evaluation (6 wrong answers) for the module's judge runs, in a store of the module's own: each test's
    judge server has its own port, which the errors run's reuse key holds, so no test reuses another's run."""
    from tests.mini_study import current_store

    root = tmp_path_factory.mktemp("judge")
    with current_store(f"sqlite:///{root / 'mlflow.db'}", root):
        yield evaluate(EvaluateParams(model="qwen2.5-0.5b", limit=6, max_new_tokens=6))


def test_parser_is_strict():
    assert parse_judgment('{"category": "B", "reason": "skipped"}') == ("B", "skipped")
    assert parse_judgment('```json\n{"category": "(C)", "reason": "x"}\n```') == ("C", "x")
    assert parse_judgment("A") == ("A", "")
    assert parse_judgment("(B): missing step") == ("B", "missing step")
    assert parse_judgment('{"category": "D"}')[0] is None
    assert parse_judgment("I think the answer is A because")[0] is None
    assert parse_judgment("")[0] is None


def test_judges_every_wrong_answer(eval_run, monkeypatch):
    """Judges every wrong answer with structured output."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-logged")
    with OpenAIStub(judge_by_question) as server:
        run_id = errors(ErrorsParams(eval_run=eval_run, judge_base_url=server.base_url))
    run = mlflow.get_run(run_id)
    m = run.data.metrics
    assert m["n_wrong"] == 6 and m["n_judged"] == 6 and m["n_failed"] == 0
    assert m["errors_semantic"] + m["errors_step_missing"] + m["errors_calculation"] == 6
    assert m["errors_semantic_frac"] + m["errors_step_missing_frac"] + m["errors_calculation_frac"] == pytest.approx(1)
    assert m["judge_prompt_tokens"] == 60 and run.data.tags["distill.eval_run_id"] == eval_run
    assert run.data.tags["distill.student"] == "qwen2.5-0.5b"
    body = server.requests[0]["body"]
    assert body["model"] == "gpt-4o" and body["response_format"]["type"] == "json_schema"
    prompts = [r["body"]["messages"][-1]["content"] for r in server.requests]
    assert all("####" in p and "(A) Semantic Misunderstanding" in p for p in prompts)  # English reference shown
    assert any("ジャネットのアヒル" in p and "#### 18" in p for p in prompts)
    rows = [json.loads(x) for x in mlflow.artifacts.load_text(f"runs:/{run_id}/judgments.jsonl").splitlines()]
    assert {r["category"] for r in rows} <= {"A", "B", "C"} and all(r["reason"] == "stub" for r in rows)
    everything = json.dumps(run.data.params) + json.dumps(run.data.tags)
    assert "sk-never-logged" not in everything
    traces = mlflow.search_traces(locations=[run.info.experiment_id], return_type="list")
    assert len(traces) >= 6  # tracing of the judge calls is on by default


def test_failures_counted_rerun_asks_rest(eval_run, monkeypatch):
    """Failures are counted and a rerun asks only what is missing."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with OpenAIStub(judge_by_question) as server:
        server.fail_next(429, retry_after=0)       # retried by the client, then answered
        server.fail_next(500)                       # retried, then answered
        server.slow_next(3)                         # past the 1 s timeout, no retries left: failed
        server.reply_next("the answer is D")        # garbage twice: failed as unparseable
        server.reply_next("still D")
        first = errors(ErrorsParams(eval_run=eval_run, judge_base_url=server.base_url, timeout=1, max_retries=1,
                                    concurrency=1, trace=False))
        m = mlflow.get_run(first).data.metrics
        assert m["judge_http_429"] == 1 and m["judge_http_500"] == 1
        assert m["n_failed"] >= 1 and m["failed_unparseable"] == 1
        assert m["n_judged"] + m["n_failed"] == 6
        assert mlflow.get_run(first).data.tags["distill.incomplete"] == "true"
        asked_before = len(server.requests)
        second = errors(ErrorsParams(eval_run=eval_run, judge_base_url=server.base_url, timeout=1, max_retries=1,
                                     concurrency=1, trace=False))
        assert second != first
        assert len(server.requests) - asked_before == m["n_failed"]  # only what was missing
        m2 = mlflow.get_run(second).data.metrics
        assert m2["n_judged"] == 6 and m2["n_failed"] == 0 and m2["n_resumed"] == m["n_judged"]
        assert "distill.incomplete" not in mlflow.get_run(second).data.tags
        # complete now: a third call reuses it
        assert errors(ErrorsParams(eval_run=eval_run, judge_base_url=server.base_url, timeout=1, max_retries=1,
                                   concurrency=1, trace=False)) == second


def test_no_structured_output_parser(eval_run):
    """Server without structured output falls back to the parser."""
    def no_schema(kind, body):
        if "response_format" in body:
            return (400, "response_format json_schema is not supported")
        return '{"category": "C", "reason": "arithmetic"}'

    with OpenAIStub(no_schema) as server:
        run_id = errors(ErrorsParams(eval_run=eval_run, judge_base_url=server.base_url, trace=False))
    m = mlflow.get_run(run_id).data.metrics
    assert m["errors_calculation"] == 6 and m["judge_structured_output"] == 0


def test_no_key_no_server_stops(eval_run, monkeypatch):
    """No key and no server stops before any work."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    before = len(mlflow.search_runs(output_format="list"))
    with pytest.raises(DistillError, match="needs OPENAI_API_KEY"):
        errors(ErrorsParams(eval_run=eval_run))
    assert len(mlflow.search_runs(output_format="list")) == before


def test_no_wrong_answers(tracking, tmp_path):
    """An evaluation without wrong answers."""
    path = tmp_path / "trivial.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer_number": 7}) + "\n" for i in range(3)))
    with OpenAIStub() as gen_server:  # the stub answers "... 解答: 7": every answer right
        eval_id = evaluate(EvaluateParams(model="7B", eval_set=str(path), backend="openai",
                                          base_url=gen_server.base_url))
    with OpenAIStub(judge_by_question) as server:
        run_id = errors(ErrorsParams(eval_run=eval_id, judge_base_url=server.base_url))
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["n_wrong"] == 0
    assert run.data.metrics["errors_semantic"] == 0 and not server.requests
