import json

import mlflow
import pytest

from distill import DistillError
from distill.phases.tokens import TokensParams, calculation_steps, run as tokens, uses_decimal
from tests.mini_study import Sizes
from tests.test_report import plotly_js_logged, shared_plotlyjs_of

MINI_STUDY = Sizes(limit=8, max_new_tokens=12, n=6, dev_size=0)


def test_style_measures():
    seven_b = "小麦粉: 5 × 16 = 80 スプーン\n砂糖: 3 × 16 = 48 スプーン\n80 + 48 + 4 = 132\n解答: 132"
    seventy_two_b = "5 + 3 + 0.25 = 8.25 スプーン\n16 × 8.25 = 130\n解答: 130"
    assert calculation_steps(seven_b) == 3 and calculation_steps(seventy_two_b) == 2
    assert not uses_decimal(seven_b) and uses_decimal(seventy_two_b)
    assert calculation_steps("１６×８．２５＝１３２") == 1  # full-width
    assert calculation_steps("解答: 12") == 0 and not uses_decimal("2.")


def test_tokens_per_teacher_and_tokenizer(mini_study):
    run_id = tokens(TokensParams())
    run = mlflow.get_run(run_id)
    assert run.data.tags["distill.select_run_id"] == mini_study["select"]
    m = run.data.metrics
    assert set(m) == {"n_answers", "n_tokenizers"} and m["n_answers"] == 3 * 2 * 6   # a table, not 40 metric names
    table = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/token_summary.json"))
    cols = table["columns"]
    assert len(table["data"]) == 6 and {"steps_mean", "decimal_frac"} <= set(cols)
    for row in table["data"]:
        r = dict(zip(cols, row))
        assert r["tokens_q1"] <= r["tokens_median"] <= r["tokens_q3"]
    html = mlflow.artifacts.load_text(f"runs:/{run_id}/figures/token_counts.html")
    assert "Plotly" in html and "cdn" not in html.lower()  # no network: the experiment's one plotly.js
    asset_run, path, _ = shared_plotlyjs_of(html)
    assert 'src="plotly.min.mjs"' in html and asset_run != run_id and plotly_js_logged(asset_run, path)
    assert {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, "figures")} == {
        "figures/token_counts.html", "figures/token_counts.json"}         # no copy of plotly.js per run
    rows = [json.loads(x) for x in mlflow.artifacts.load_text(f"runs:/{run_id}/token_counts.jsonl").splitlines()]
    assert len(rows) == 3 * 2 * 6 and all(r["tokens"] > 0 for r in rows)
    with pytest.raises(DistillError, match="unknown tokenizer"):
        tokens(TokensParams(tokenizers="gpt2"))
