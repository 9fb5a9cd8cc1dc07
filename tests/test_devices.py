"""Inputs follow the model's device.

`mlflow.transformers.load_model` puts a model on `cuda:0` whenever a GPU exists, and a tokenizer makes
CPU tensors; code that feeds one to the other must move the inputs to the model. No GPU here: the
model is moved to `meta` instead, and a forward pre-hook records where its inputs arrive and stops the
call before any meta computation (meta tensors cannot be copied back, so nothing runs past the hook).
"""

import sys

import pytest
import torch


def on_meta_recording_inputs(folder):
    """The tiny model on `meta`, with the devices its forward receives recorded in `seen`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).to("meta")
    seen = []

    def record_and_stop(module, args, kwargs):
        seen.append(kwargs["input_ids"].device)
        raise RuntimeError("stopped after recording the input device")

    model.register_forward_pre_hook(record_and_stop, with_kwargs=True)
    return model, seen


def test_load_back_check_uses_model_device(monkeypatch, tiny_student):
    """The load-back check feeds the model on its own device.

    The check after logging a student: a model that load_model put elsewhere gets its inputs there."""
    import mlflow.transformers  # noqa: F401  (loads the module patched below)
    from transformers import AutoTokenizer

    from distill import DistillError
    from distill.tracking.registry import verify_logged_model

    model, seen = on_meta_recording_inputs(tiny_student)
    pipe = type("Pipeline", (), {"model": model, "tokenizer": AutoTokenizer.from_pretrained(tiny_student)})()
    monkeypatch.setattr(sys.modules["mlflow.transformers"], "load_model", lambda uri, **kwargs: pipe)
    with pytest.raises(DistillError, match="stopped after recording"):
        verify_logged_model("runs:/0123456789abcdef0123456789abcdef/model")
    assert seen == [torch.device("meta")]


def test_model_spread_over_its_gpus():
    """A model given several GPUs is spread over them; one GPU or a CPU gets it whole.

    The 72B teacher at tensor_parallel_size 4 under backend=transformers: `.to("cuda")` put it whole on one GPU."""
    from distill.generation.hf import load_placement

    assert load_placement("cuda", 4) == {"device_map": "auto"}
    assert load_placement("cuda", 2) == {"device_map": "auto"}
    assert load_placement("cuda", 1) == {} and load_placement("cpu", 0) == {} and load_placement("cpu", 4) == {}
    assert load_placement("mps", 4) == {}


def test_spread_model_left_where_placed(monkeypatch, tiny_student):
    """The generator leaves a spread model where accelerate put it.

    On CUDA with 4 GPUs visible it loads with device_map="auto" and never calls `.to(device)` on the model (no GPU
    here: from_pretrained is recorded and loads on the CPU; `.to("cuda")` would fail on this CPU-only torch)."""
    from transformers import AutoModelForCausalLM

    from distill.generation.hf import TransformersGenerator

    load, asked = AutoModelForCausalLM.from_pretrained, []

    def recorded(source, **kwargs):
        asked.append(kwargs)
        model = load(source, **{k: v for k, v in kwargs.items() if k != "device_map"})
        monkeypatch.setattr(model, "to", lambda *a, **k: pytest.fail(f"model moved to {a or k}"))
        return model

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", recorded)
    generator = TransformersGenerator(str(tiny_student), device="cuda")
    assert asked[0]["device_map"] == "auto"
    assert generator.model.device == torch.device("cpu")  # where it was put; inputs follow model.device
