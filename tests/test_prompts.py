from distill.data.prompts import PAPER_PROMPT, chat_messages, few_shot_prompt, mgsm_exemplars, plain_prompt

APPENDIX_B = """問題: {問題文}
ステップごとに考えて答えを導いてください。
解答を [answer] とするとき以下のフォーマットで出力してください。
解答: [answer]"""


def test_paper_prompt_is_verbatim():
    assert PAPER_PROMPT.replace("{question}", "{問題文}") == APPENDIX_B


def test_plain_and_chat_same_prompt():
    """Plain and chat carry the same prompt."""
    assert plain_prompt("Q") == APPENDIX_B.replace("{問題文}", "Q") + "\n"
    assert chat_messages("Q") == [{"role": "user", "content": APPENDIX_B.replace("{問題文}", "Q")}]


def test_few_shot_four_mgsm_exemplars():
    """Few-shot uses four MGSM exemplars, in the paper's format."""
    prompt = few_shot_prompt("最後の問題", shots=4)
    assert prompt.count("ステップごとに考えて答えを導いてください。") == 5
    for ex in mgsm_exemplars()[:4]:
        assert f"解答: {ex['answer_number']}" in prompt
    assert mgsm_exemplars()[4]["question"].removeprefix("問題：") not in prompt
    assert prompt.rstrip().endswith("解答: [answer]")
    assert "問題: 最後の問題" in prompt


def test_cut_at_next_question():
    """`cut_at_next_question` keeps the answer and drops the invented question."""
    from distill.data.prompts import cut_at_next_question

    assert cut_at_next_question("3+4=7\n解答: 7\n\n問題: 次は5個") == "3+4=7\n解答: 7"
    assert cut_at_next_question("解答: 7\n問題: 5") == "解答: 7"
    assert cut_at_next_question("この問題では7個。解答: 7") == "この問題では7個。解答: 7"  # not a new question
    assert cut_at_next_question("") == ""
