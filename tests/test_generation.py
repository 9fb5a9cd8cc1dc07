"""The three backends behind one interface: transformers on a tiny model, openai on a local server,
vLLM's request building (vLLM itself needs a GPU)."""

import subprocess
import sys

import pytest

from distill import DistillError
from distill.data.prompts import chat_messages, plain_prompt
from distill.generation import GenerationConfig, make_generator
from distill.generation.vllm_backend import sampling_kwargs, split_by_kind
from tests.openai_server import OpenAIStub

QUESTIONS = ["りんごが3個あります。", "ジャネットのアヒルは1日に16個の卵を生みます。残りはいくつ？", "1+1は？",
             "ロジャーは5個のテニスボールがあります。缶を2つ買います。"]


@pytest.fixture(scope="module")
def hf_gen(tiny_teacher):
    return make_generator("transformers", str(tiny_teacher))


def test_batched_greedy_equals_one_by_one(hf_gen):
    prompts = [plain_prompt(q) for q in QUESTIONS]
    cfg = GenerationConfig(max_new_tokens=12, batch_size=1)
    one = [o.text for o in hf_gen.generate(prompts, cfg, progress=False)]
    batched = hf_gen.generate(prompts, GenerationConfig(max_new_tokens=12, batch_size=4), progress=False)
    assert [o.text for o in batched] == one
    assert all(0 < o.n_tokens <= 12 for o in batched)


def test_chat_prompts_use_the_chat_template(hf_gen):
    rendered, special = hf_gen.render(chat_messages("1+1は？"))
    assert rendered.startswith("<|im_start|>user\n問題: 1+1は？") and rendered.endswith("<|im_start|>assistant\n")
    assert not special
    out = hf_gen.generate([chat_messages(q) for q in QUESTIONS[:2]], GenerationConfig(max_new_tokens=5),
                          progress=False)
    assert len(out) == 2


def test_stop_strings_cut_the_output(hf_gen):
    prompts = [plain_prompt(q) for q in QUESTIONS]
    free = hf_gen.generate(prompts, GenerationConfig(max_new_tokens=16), progress=False)
    # Stop on the third character the model actually writes: the output must end before it.
    target = next(o.text for o in free if len(o.text.strip()) > 3).strip()[2]
    stopped = hf_gen.generate(prompts, GenerationConfig(max_new_tokens=16, stop=(target,)), progress=False)
    for f, s in zip(free, stopped):
        assert target not in s.text
        assert f.text.startswith(s.text)


def test_repetition_penalty_changes_output(hf_gen):
    """`repetition_penalty` changes greedy output."""
    prompts = [plain_prompt(q) for q in QUESTIONS]
    a = hf_gen.generate(prompts, GenerationConfig(max_new_tokens=24), progress=False)
    b = hf_gen.generate(prompts, GenerationConfig(max_new_tokens=24, repetition_penalty=1.5), progress=False)
    assert [x.text for x in a] != [x.text for x in b]


def test_openai_backend_over_real_http(monkeypatch):
    """The openai backend talks to a real HTTP server."""
    with OpenAIStub() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
        gen = make_generator("openai", "Qwen/Qwen2.5-7B-Instruct", concurrency=4)
        outs = gen.generate([chat_messages(q) for q in QUESTIONS] + [plain_prompt("x")],
                            GenerationConfig(max_new_tokens=64, stop=("\n問題:",)), progress=False)
    assert [o.text for o in outs] == ["ステップごとに考えます。3+4=7\n解答: 7"] * 5
    paths = sorted(r["path"] for r in server.requests)
    assert paths == ["/v1/chat/completions"] * 4 + ["/v1/completions"]
    body = server.requests[0]["body"]
    assert body["model"] == "Qwen/Qwen2.5-7B-Instruct" and body["temperature"] == 0 and body["max_tokens"] == 64
    assert server.requests[0]["auth"] == "Bearer sk-test-key"


@pytest.mark.parametrize("penalty", [1.0, 1.1])
def test_openai_requests_state_all_decoding(penalty):
    """The openai backend states its whole decoding on every request.

    A setting left out is the server's to choose (vllm serve: Qwen2.5's own penalty 1.05), so every one is sent."""
    with OpenAIStub() as server:
        gen = make_generator("openai", "m", base_url=server.base_url, concurrency=2)
        gen.generate([chat_messages("1+1は？"), plain_prompt("1+1は？")],
                     GenerationConfig(max_new_tokens=1024, repetition_penalty=penalty), progress=False)
    assert len(server.requests) == 2
    for request in server.requests:
        body = request["body"]
        assert body["temperature"] == 0 and body["max_tokens"] == 1024
        assert body["repetition_penalty"] == penalty  # extra_body lands at the top level of the JSON
        assert "stop" not in body


def _refuse_repetition_penalty(kind, body):
    if "repetition_penalty" in body:
        return 400, "Unrecognized request argument supplied: repetition_penalty"
    return "解答: 2"


def test_no_repetition_penalty_unless_asked(capfd):
    """A server without `repetition_penalty` gets none, only when none is asked."""
    with OpenAIStub(_refuse_repetition_penalty) as server:
        gen = make_generator("openai", "gpt-4o-mini", base_url=server.base_url, concurrency=1)
        outs = gen.generate([chat_messages("1+1は？")] * 3, GenerationConfig(max_new_tokens=8), progress=False)
        assert [o.text for o in outs] == ["解答: 2"] * 3
        assert [("repetition_penalty" in r["body"]) for r in server.requests] == [True, False, False, False]
        assert "does not take repetition_penalty" in capfd.readouterr().err
        with pytest.raises(DistillError, match="repetition_penalty=1.1 cannot be applied there"):
            make_generator("openai", "gpt-4o-mini", base_url=server.base_url).generate(
                [plain_prompt("1+1は？")], GenerationConfig(max_new_tokens=8, repetition_penalty=1.1), progress=False)


def test_openai_backend_retries_429_and_500(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with OpenAIStub() as server:
        server.fail_next(429, retry_after=0)
        server.fail_next(500)
        gen = make_generator("openai", "m", base_url=server.base_url, concurrency=1)
        outs = gen.generate([chat_messages("1+1は？")], GenerationConfig(max_new_tokens=8), progress=False)
    assert outs[0].text.endswith("解答: 7")
    assert len(server.requests) == 3


def test_openai_without_server_or_key(monkeypatch):
    """The openai backend without a server or key says so."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(DistillError, match="OPENAI_API_KEY"):
        make_generator("openai", "m")


def test_vllm_request_building_without_a_gpu():
    cfg = GenerationConfig(max_new_tokens=1024, repetition_penalty=1.1, stop=("\n問題:",))
    assert sampling_kwargs(cfg) == {"max_tokens": 1024, "temperature": 0.0, "repetition_penalty": 1.1,
                                    "seed": 0, "stop": ["\n問題:"]}
    assert split_by_kind(["a", [{"role": "user", "content": "b"}], "c"]) == ([0, 2], [1])


def test_vllm_is_imported_only_when_chosen():
    code = ("import sys, distill.generation, distill.phases.evaluate, distill.generation.options; "
            "assert 'vllm' not in sys.modules; print('ok')")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"


def test_unknown_backend():
    with pytest.raises(DistillError, match="transformers, vllm, openai"):
        make_generator("tgi", "m")


def test_backends_table_lazy_and_keyed():
    """The backends table imports no backend and matches the reuse key.

    Backends import `base`; nothing imports a backend until it is chosen (no import circle), and the
    reuse key's backend modules are the table's."""
    from distill.generation.backends import BACKENDS, backend_module
    from distill.tracking import cache_keys

    assert cache_keys.BACKEND_MODULES == {b: backend_module(b) for b in BACKENDS}
    code = ("import sys, distill.generation; "
            "print(sorted(m for m in sys.modules if m.startswith('distill.generation.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    assert out == "['distill.generation.backends', 'distill.generation.base']"


def eos_against_one_token(folder, prompts):
    """The tiny model with its logits made a race: EOS 10, one token absent from every prompt 9.5, the
    rest the model's own logits shrunk to noise. Penalised once (10 / 1.1 = 9.09), EOS loses the race."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    used = {t for p in prompts for t in tokenizer(p).input_ids}
    rival = next(t for t in range(len(tokenizer)) if t not in used and t not in tokenizer.all_special_ids)
    head = torch.nn.Linear(model.config.hidden_size, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.copy_(model.get_output_embeddings().weight * 0.01)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id], head.bias[rival] = 10.0, 9.5
    model.lm_head = head
    model.config.tie_word_embeddings = False
    return model, tokenizer, rival


def test_padding_not_in_repetition_penalty(tiny_teacher):
    """Padding never enters the repetition penalty.

    Left padding is the EOS id (pad = eos for Qwen2.5 base and SmolLM2): a penalty that counted it would
    penalise EOS in padded rows only, and an answer would depend on how its prompts were batched."""
    prompts = [plain_prompt(q * (1 + i % 5)) for i, q in enumerate(QUESTIONS * 4)]  # 16 prompts, 16 lengths
    model, tokenizer, rival = eos_against_one_token(tiny_teacher, prompts)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    gen = make_generator("transformers", "in-memory", model=model, tokenizer=tokenizer, device="cpu")
    cfg = dict(max_new_tokens=4, repetition_penalty=1.1)
    one = gen.generate(prompts, GenerationConfig(batch_size=1, **cfg), progress=False)
    sixteen = gen.generate(prompts, GenerationConfig(batch_size=16, **cfg), progress=False)
    assert [(o.text, o.n_tokens) for o in sixteen] == [(o.text, o.n_tokens) for o in one]
    assert all(o.n_tokens == 1 and o.finish_reason == "stop" for o in one)  # EOS first: no EOS before it to count
    # the race is real: with EOS in the context once, the rival token wins
    forced = gen.generate([p + tokenizer.eos_token for p in prompts[:2]], GenerationConfig(batch_size=1, **cfg),
                          progress=False)
    assert [o.n_tokens for o in forced] == [2, 2] and all(o.text == tokenizer.decode([rival]) for o in forced)
