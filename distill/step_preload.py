"""What every step process of `main` needs, imported once by the fork server (distill.steps).

Nothing here touches a GPU: a CUDA context made before the fork would break every child.
"""

import importlib
import os

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # torch.cuda.is_available() without initialising CUDA

# transformers and TRL import lazily: name the modules a step reaches (model loading pulls in
# torch._dynamo and sympy, ~5 s here), or each step process would import them again.
MODULES = (
    "mlflow", "mlflow.transformers", "torch", "datasets", "transformers", "transformers.modeling_utils",
    "transformers.masking_utils", "transformers.activations", "transformers.modeling_layers",
    "transformers.generation.utils", "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto", "transformers.models.qwen2.modeling_qwen2",
    "transformers.models.llama.modeling_llama", "transformers.trainer", "trl", "trl.trainer.sft_trainer",
    "trl.trainer.sft_config", "distill.models", "distill.generation.hf", "distill.translate", "distill.teacher",
    "distill.evaluate", "distill.sft", "distill.sft_callbacks", "distill.tokens",
)

for _name in MODULES:
    try:
        importlib.import_module(_name)
    except Exception:  # noqa: BLE001 - the step that needs it reports the error in its own process
        pass
