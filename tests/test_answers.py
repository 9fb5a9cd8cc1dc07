import pytest

from distill.scoring.answers import RULES, extract_answer, extract_answer_line, is_correct, parse_gold, score

# (output, the paper's rule: last number of the output, the answer-line rule)
CASES = [
    # the table: where the two rules part, and where `答は` inside `回答は` is no mark
    ("解答: 3 × 6 = 18", 18, 18),
    ("解答: 4日間で合計72個", 72, 72),
    ("解答: 1日あたり18ドル", 18, 18),
    ("回答は3人です。よって合計は20", 20, 20),
    ("解答: 18\n\n次の問題では5個", 5, 18),
    ("解答: 130\n\n次の問題では5個", 5, 130),
    # the formats every reading goes through
    ("...したがって合計は132スプーンです。\n解答: [132]", 132, 132),
    ("解答: 130", 130, 130),
    ("合計は1,234個です。", 1234, 1234),
    ("答えは１２３です", 123, 123),
    ("彼女は$18を得ます。", 18, 18),
    ("毎日18ドル稼ぎます。", 18, 18),
    ("気温はマイナスで、解答: -5", -5, -5),
    ("解答：－７", -7, -7),
    ("16 × 8.25 = 132\n解答: 8.25", 8.25, 8.25),
    ("10-3=7", 7, 7),
    ("8.25 × 16 = 132。", 132, 132),
    ("答えは 1,000,000 円", 1_000_000, 1_000_000),
    ("解答: [0.5]", 0.5, 0.5),
    ("解答: 5個です。\n(検算: 5 × 3 = 15)", 15, 5),
    ("答え: 7\n問題: 次は12個", 12, 7),
    ("正答は3つ。合計は9", 9, 9),
    ("解答:\n42", 42, 42),                   # nothing on the mark's line: the paper's rule
    ("解答: わからない。途中で12を得た", 12, 12),  # no number after the mark: the paper's rule
]


@pytest.mark.parametrize("text,paper,answer_line", CASES)
def test_both_rules_on_real_output_forms(text, paper, answer_line):
    assert extract_answer(text) == pytest.approx(paper)
    assert extract_answer(text, "paper") == pytest.approx(paper)
    assert extract_answer_line(text) == pytest.approx(answer_line)
    assert extract_answer(text, "answer_line") == pytest.approx(answer_line)


def test_score_gives_both_readings():
    """`score` gives both readings (paper rule and answer line) as record fields."""
    assert score("解答: 18\n\n次の問題では5個", 18) == {
        "extracted": "5", "correct": False, "extracted_answer_line": "18", "correct_answer_line": True}
    assert score("解答: 3 × 6 = 18", 18.0) == {
        "extracted": "18", "correct": True, "extracted_answer_line": "18", "correct_answer_line": True}
    cut = score("解答: 7", 7, variant="cut_at_next_question")
    assert cut == {"extracted_cut_at_next_question": "7", "correct_cut_at_next_question": True,
                   "extracted_cut_at_next_question_answer_line": "7",
                   "correct_cut_at_next_question_answer_line": True}
    assert score(None, 3) == {"extracted": None, "correct": False, "extracted_answer_line": None,
                              "correct_answer_line": False}


@pytest.mark.parametrize("text", ["", None, "わかりません", "解答: [answer]", "\n\n\n"])
@pytest.mark.parametrize("rule", RULES)
def test_unparseable_output_is_none(text, rule):
    """Output with no number is None, not an exception."""
    assert extract_answer(text, rule) is None


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="paper, answer_line"):
        extract_answer("1", "first")


def test_tolerance_is_the_papers():
    assert is_correct(18.000001, 18)
    assert not is_correct(18.0001, 18)
    assert not is_correct(None, 18)


def test_gold_from_solution_and_numbers():
    """The gold number is read from a GSM8K solution, a number or a numeric text."""
    assert parse_gold("She has 3+4=<<3+4=7>>7 apples.\n#### 1,234") == 1234
    assert parse_gold(70000) == 70000
    assert parse_gold("18") == 18
    assert parse_gold("eighteen") is None
    assert parse_gold(None) is None
