"""The `evaluate` phase end to end, against a real `mlflow server` on 127.0.0.1."""

import json
import os
import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, free_port, run_entry
from tests.openai_server import OpenAIStub


def _last_run(uri, experiment="distill-offline"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0], client


@pytest.mark.slow
def test_logs_metrics_tags_dataset_table(mlflow_server, tmp_path):
    """Evaluate logs metrics tags dataset and table."""
    run_entry("evaluate", "--model", "qwen2.5-0.5b", "--preset", "offline", "--eval_set", "mgsm-ja",
              "--limit", "12", env={"MLFLOW_TRACKING_URI": mlflow_server}, cwd=tmp_path)
    run, client = _last_run(mlflow_server)
    m, tags, params = run.data.metrics, run.data.tags, run.data.params
    assert m["n_total"] == 12 and 0 <= m["n_correct"] <= 12
    assert m["accuracy_ci_low"] <= m["accuracy"] <= m["accuracy_ci_high"]
    assert m["accuracy_answer_line_ci_low"] <= m["accuracy_answer_line"] <= m["accuracy_answer_line_ci_high"]
    assert 0 <= m["n_truncated"] <= 12 and "accuracy_cut_at_next_question" not in m  # zero-shot: no cut variant
    assert tags["distill.phase"] == "evaluate" and tags["distill.student"] == "qwen2.5-0.5b"
    assert params["prompt_format"] == "plain" and params["mode"] == "zero-shot" and params["limit"] == "12"
    # columns a compare view can put on an axis, and a readable model name
    assert params["role"] == "baseline" and params["student"] == "qwen2.5-0.5b" and params["teacher"] == ""
    assert (params["model"] == "baseline-qwen2.5-0.5b-zeroshot"
            and params["model_source"] == "tiny:student-qwen2.5-0.5b")
    assert run.info.run_name == "evaluate-baseline-qwen2.5-0.5b-zeroshot"
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "distill-offline" and "preset `offline`" in exp.tags["mlflow.note.content"]
    inputs = run.inputs.dataset_inputs
    assert inputs[0].dataset.name == "mgsm-ja" and inputs[0].dataset.digest
    assert inputs[0].tags[0].value == "evaluation"
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, tracking_uri=mlflow_server,
                                                dst_path=str(tmp_path / "a"))
    rows = [json.loads(line) for line in open(os.path.join(local, "predictions.jsonl"), encoding="utf-8")]
    assert len(rows) == 12
    assert set(rows[0]) >= {"id", "question", "output", "extracted", "gold", "correct", "extracted_answer_line",
                            "correct_answer_line", "finish_reason"}
    assert rows[0]["gold"] == "18"
    assert m["n_correct"] == sum(r["correct"] for r in rows)
    assert m["n_correct_answer_line"] == sum(r["correct_answer_line"] for r in rows)
    table = json.load(open(os.path.join(local, "predictions.json"), encoding="utf-8"))
    assert "correct" in table["columns"] and len(table["data"]) == 12


@pytest.mark.slow
def test_teacher_few_shot_and_reuse(mlflow_server, tmp_path):
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    run_entry("evaluate", "--model", "7B", "--preset", "offline", "--limit", "3", "--max_new_tokens", "8",
              env=env, cwd=tmp_path)
    run, _ = _last_run(mlflow_server)
    assert run.data.params["prompt_format"] == "chat" and run.data.tags["distill.teacher"] == "7B"
    assert run.data.params["role"] == "teacher" and run.data.params["teacher"] == "7B"
    assert run.info.run_name == "evaluate-teacher-7B"
    run_entry("evaluate", "--model", "qwen2.5-1.5b", "--preset", "offline", "--mode", "few-shot", "--limit", "3",
              "--max_new_tokens", "8", env=env, cwd=tmp_path)
    run, _ = _last_run(mlflow_server)
    assert run.data.params["repetition_penalty"] == "1.1" and run.data.tags["distill.baseline"] == "4-shot"
    assert run.data.params["shots"] == "4" and run.data.params["stop"] == "eos"
    assert "accuracy_cut_at_next_question" in run.data.metrics
    again = run_entry("evaluate", "--model", "qwen2.5-1.5b", "--preset", "offline", "--mode", "few-shot",
                      "--limit", "3", "--max_new_tokens", "8", env=env, cwd=tmp_path)
    assert f"reusing FINISHED run {run.info.run_id}" in again.stderr


@pytest.mark.slow
def test_through_openai_server(tracking, tmp_path, monkeypatch):
    """Evaluate through an OpenAI compatible server."""
    with OpenAIStub() as server:
        proc = run_entry("evaluate", "--model", "7B", "--preset", "offline", "--limit", "4", "--backend", "openai",
                         "--base_url", server.base_url, "--eval_set", str(_jsonl(tmp_path)),
                         env={"MLFLOW_TRACKING_URI": tracking, "OPENAI_API_KEY": "sk-secret"}, cwd=tmp_path)
    run = mlflow.search_runs(experiment_names=["distill-offline"], output_format="list")[0]
    assert run.data.metrics["accuracy"] == pytest.approx(50.0)  # the stub always answers 7; gold 7, 7, 8, 9
    assert server.requests[0]["body"]["model"] == "7B"  # a tiny model has no Hub id: the server knows it by name
    assert "sk-secret" not in json.dumps(run.data.params) + json.dumps(run.data.tags) + proc.stderr


def _runs_on(kind, body):
    """A base model that answers, then invents the next question (what the paper's 4-shot rows scored)."""
    return "3+4=7\n解答: 7\n\n問題: ケンは5個のりんごを持っています。"


def test_few_shot_runs_on_cut_beside(tracking, tmp_path, monkeypatch):
    """Few shot baseline runs on as the paper did and logs the cut beside."""
    from distill.phases.evaluate import EvaluateParams, run as evaluate

    with OpenAIStub(_runs_on) as server:
        run_id = evaluate(EvaluateParams(model="qwen2.5-0.5b", mode="few-shot", backend="openai",
                                         base_url=server.base_url, eval_set=str(_jsonl(tmp_path))))
    for request in server.requests:  # the paper's decoding, stated in full; no stop string beyond EOS
        body = request["body"]
        assert request["path"] == "/v1/completions" and "stop" not in body
        assert body["temperature"] == 0 and body["repetition_penalty"] == 1.1 and body["max_tokens"] == 32
        assert body["prompt"].count("ステップごとに考えて") == 5 and body["prompt"].endswith("解答: [answer]\n")
    m = mlflow.get_run(run_id).data.metrics
    assert m["accuracy"] == 0.0                                  # the paper's rule reads the invented 5
    assert m["accuracy_cut_at_next_question"] == pytest.approx(50.0) and m["n_correct_cut_at_next_question"] == 2
    assert m["accuracy_answer_line"] == pytest.approx(50.0)
    rows = [json.loads(x) for x in mlflow.artifacts.load_text(f"runs:/{run_id}/predictions.jsonl").splitlines()]
    assert ([r["extracted"] for r in rows] == ["5"] * 4
            and [r["extracted_cut_at_next_question"] for r in rows] == ["7"] * 4)
    assert [r["correct_cut_at_next_question"] for r in rows] == [True, True, False, False]
    params = mlflow.get_run(run_id).data.params
    assert params["shots"] == "4" and params["scoring"] == "paper"


def test_shots_come_from_the_preset(tracking, tmp_path):
    from distill import DistillError
    from distill.phases.evaluate import EvaluateParams, run as evaluate

    preset = tmp_path / "two-shot.yaml"
    text = (ROOT / "distill" / "presets" / "offline.yaml").read_text()
    preset.write_text(text.replace("name: offline", "name: two-shot").replace("shots: 4", "shots: 2"))
    with OpenAIStub(_runs_on) as server:
        run_id = evaluate(EvaluateParams(model="qwen2.5-0.5b", preset=str(preset), mode="few-shot", backend="openai",
                                         base_url=server.base_url, eval_set=str(_jsonl(tmp_path)), limit=1))
    assert server.requests[0]["body"]["prompt"].count("ステップごとに考えて") == 3
    assert mlflow.get_run(run_id).data.tags["distill.baseline"] == "2-shot"
    with pytest.raises(DistillError, match=r"shots must be an integer in \[1, 8\]"):
        evaluate(EvaluateParams(model="qwen2.5-0.5b", mode="few-shot", shots=9, eval_set=str(_jsonl(tmp_path))))
    no_shots = tmp_path / "no-shots.yaml"
    no_shots.write_text(text.replace("name: offline", "name: no-shots").replace("  shots: 4\n", ""))
    with pytest.raises(DistillError, match="has no baseline.shots; pass shots=<n>"):
        evaluate(EvaluateParams(model="qwen2.5-0.5b", preset=str(no_shots), mode="few-shot",
                                eval_set=str(_jsonl(tmp_path))))


def test_a_served_model_name_without_a_slash(tracking, tmp_path):
    from distill import DistillError
    from distill.phases.evaluate import EvaluateParams, run as evaluate

    with OpenAIStub() as server:
        run_id = evaluate(EvaluateParams(model="gpt-4o-mini", backend="openai", base_url=server.base_url,
                                         eval_set=str(_jsonl(tmp_path))))
    assert {r["body"]["model"] for r in server.requests} == {"gpt-4o-mini"}
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}  # a served name gets the chat format
    run = mlflow.get_run(run_id)
    assert run.data.tags["distill.model"] == "gpt-4o-mini" and run.data.metrics["accuracy"] == pytest.approx(50.0)
    with pytest.raises(DistillError, match="unknown model name 'gpt-4o-mini'"):
        evaluate(EvaluateParams(model="gpt-4o-mini", backend="transformers", eval_set=str(_jsonl(tmp_path))))


def _jsonl(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"question": f"問{i}", "answer_number": g}) + "\n"
                            for i, g in enumerate([7, 7, 8, 9])))
    return path


@pytest.mark.parametrize("args,message", [
    (["--model", "qwen3-0.6b"], "known names: 7B, 14B, 32B, 72B, qwen2.5-0.5b"),
    (["--model", "./no/such/model"], "model path not found: {tmp_path}/no/such/model"),  # where it was typed
    (["--model", "7B", "--eval_set", "gsm8k-jp"], "unknown eval set 'gsm8k-jp'"),
    (["--model", "7B", "--limit", "0"], "limit must be an integer >= 1"),
    (["--model", "7B", "--preset", "tiny"], "unknown preset 'tiny'; known presets: offline, paper"),
])
def test_bad_input_one_message(tracking, tmp_path, cli, args, message):
    """Bad input gets one clear message.

    In this process (the CLI's refusal, not the interpreter, is tested); test_bad_input_fresh_process
    types one of them as a user would."""
    done = cli("evaluate", "--preset", "offline", *args)
    code, err = done.returncode, done.stderr
    assert code == 2, err[-2000:]
    assert message.format(tmp_path=tmp_path) in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_bad_input_fresh_process(tracking, tmp_path):
    """Bad input in a fresh process."""
    proc = run_entry("evaluate", "--preset", "offline", "--model", "./no/such/model", check=False, cwd=tmp_path,
                     env={"MLFLOW_TRACKING_URI": tracking})
    assert proc.returncode == 2
    assert f"model path not found: {tmp_path}/no/such/model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_tracking_server(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    proc = run_entry("evaluate", "--preset", "offline", "--model", "7B", "--limit", "2", check=False, cwd=tmp_path,
                     env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 2 and f"cannot reach the MLflow tracking server at {uri}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_file_names_line(tracking, tmp_path, cli):
    """Malformed eval file names file and line."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1", "answer_number": 2}\nnot json\n')
    done = cli("evaluate", "--preset", "offline", "--model", "7B", "--eval_set", str(bad))
    code, err = done.returncode, done.stderr
    assert code == 2 and f"{bad}:2: not valid JSON" in err


@pytest.mark.slow
def test_mlflow_run_entry_point(mlflow_server, tmp_path):
    """What the README tells a user to type."""
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "evaluate", "--env-manager", "local",
         "--experiment-name", "cli", "-P", "preset=offline", "-P", "model=qwen2.5-0.5b", "-P", "eval_set=mgsm-ja",
         "-P", "limit=5"],
        capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server,
             "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]},  # as in an activated venv
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run, _ = _last_run(mlflow_server, "cli")
    assert run.info.status == "FINISHED" and run.data.metrics["n_total"] == 5
    assert run.data.tags["mlflow.project.entryPoint"] == "evaluate"
    assert run.data.params["model"] == "qwen2.5-0.5b"          # as typed; MLflow forbids changing a logged param
    assert (run.data.params["model.resolved"] == "baseline-qwen2.5-0.5b-zeroshot"
            and run.data.params["role"] == "baseline")


@pytest.mark.slow
def test_mlflow_run_in_presets_experiment(tmp_path):
    """Plain `mlflow run` logs into the preset's experiment.

    `mlflow run` without --experiment-name makes its run in Default: that run points at distill-offline."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "evaluate", "--env-manager", "local",
         "-P", "model=qwen2.5-0.5b", "-P", "limit=3", "-P", "max_new_tokens=4"],
        capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri,
             "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli_run, _ = _last_run(uri, "Default")
    assert cli_run.data.tags["distill.experiment"] == "distill-offline" and "distill.phase" not in cli_run.data.tags
    run, _ = _last_run(uri)
    assert (run.data.tags["distill.phase"] == "evaluate"
            and run.data.params["model"] == "baseline-qwen2.5-0.5b-zeroshot")


def test_pivot_by_teacher_and_student(tracking, tmp_path):
    """Student evaluations pivot by teacher and student params.

    The compare view's question, asked of the params alone: accuracy by teacher x student."""
    from distill.phases.evaluate import EvaluateParams, run as evaluate

    client = MlflowClient()
    exp = mlflow.get_experiment_by_name("Default").experiment_id
    sft_runs = {}
    for t in ("7B", "72B"):
        for s in ("qwen2.5-0.5b", "llm-jp-3.1-1.8b"):
            run = client.create_run(exp, tags={"distill.phase": "sft", "distill.teacher": t, "distill.student": s,
                                               "distill.seed": "42"})
            client.set_terminated(run.info.run_id)
            sft_runs[(t, s)] = run.info.run_id
    answers = {"7B": "7", "72B": "8"}  # gold 7, 7, 8, 9: the 7B students score 50%, the 72B students 25%
    for (t, _), sft_id in sft_runs.items():
        with OpenAIStub(lambda kind, body, a=answers[t]: f"解答: {a}") as server:
            evaluate(EvaluateParams(model=sft_id, backend="openai", base_url=server.base_url,
                                    eval_set=str(_jsonl(tmp_path))))
    df = mlflow.search_runs([exp], filter_string="params.role = 'student'")
    assert len(df) == 4 and set(df["params.seed"]) == {"42"}
    table = df.pivot_table(index="params.teacher", columns="params.student", values="metrics.accuracy")
    assert (table.loc["7B", "qwen2.5-0.5b"] == pytest.approx(50.0)
            and table.loc["72B", "llm-jp-3.1-1.8b"] == pytest.approx(25.0))
    row = df[df["tags.distill.sft_run_id"] == sft_runs[("72B", "qwen2.5-0.5b")]].iloc[0]
    assert row["params.model"] == "student-qwen2.5-0.5b-72B-seed42"   # readable; the run id stays a tag
    assert row["tags.mlflow.runName"] == "evaluate-student-qwen2.5-0.5b-72B-seed42"
