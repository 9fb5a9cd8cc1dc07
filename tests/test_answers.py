import pytest

from distill.answers import extract_answer, is_correct, parse_gold


@pytest.mark.parametrize("text,expected", [
    ("...したがって合計は132スプーンです。\n解答: [132]", 132),
    ("解答: 130", 130),
    ("合計は1,234個です。", 1234),
    ("答えは１２３です", 123),
    ("彼女は$18を得ます。", 18),
    ("毎日18ドル稼ぎます。", 18),
    ("気温はマイナスで、解答: -5", -5),
    ("解答：－７", -7),
    ("16 × 8.25 = 132\n解答: 8.25", 8.25),
    ("10-3=7", 7),
    ("解答: 130\n\n次の問題では5個", 130),
    ("8.25 × 16 = 132。", 132),
    ("答えは 1,000,000 円", 1_000_000),
    ("解答: [0.5]", 0.5),
])
def test_extracts_final_number_in_real_output_forms(text, expected):
    assert extract_answer(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", None, "わかりません", "解答: [answer]", "\n\n\n"])
def test_unparseable_output_is_none_not_an_exception(text):
    assert extract_answer(text) is None


def test_tolerance_is_the_papers():
    assert is_correct(18.000001, 18)
    assert not is_correct(18.0001, 18)
    assert not is_correct(None, 18)


def test_gold_from_gsm8k_solution_and_numbers():
    assert parse_gold("She has 3+4=<<3+4=7>>7 apples.\n#### 1,234") == 1234
    assert parse_gold(70000) == 70000
    assert parse_gold("18") == 18
    assert parse_gold("eighteen") is None
    assert parse_gold(None) is None
