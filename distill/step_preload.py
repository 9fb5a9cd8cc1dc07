"""What every step process of `main` needs, imported once by the fork server (distill.steps).

Nothing here touches a GPU: a CUDA context made before the fork would break every child.
"""

import importlib
import os

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # torch.cuda.is_available() without initialising CUDA

# MLflow, transformers and TRL import lazily: name the modules a step reaches (model loading pulls in
# torch._dynamo and sympy, ~5 s here; MLflow's sqlite store ~6 s), or each step process imports them again.
MODULES = (
    "mlflow", "mlflow.transformers", "mlflow.store.tracking.sqlalchemy_store",  # the sqlite store: ~6 s to import
    "mlflow.store.model_registry.sqlalchemy_store", "mlflow.store.tracking.file_store", "mlflow.store.tracking.rest_store",
    "mlflow.store.artifact.local_artifact_repo", "mlflow.store.artifact.mlflow_artifacts_repo", "mlflow.pyfunc",
    "sqlalchemy.dialects.sqlite", "alembic.command", "git", "netrc", "torch", "datasets", "transformers", "transformers.modeling_utils",
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

try:
    import torch

    if torch.cuda.is_initialized():  # a preloaded library made a CUDA context: children could not use the GPU
        import sys

        print("[distill] warning: CUDA was initialised while preloading the step processes; if steps fail to use "
              "the GPU, set DISTILL_STEP_START_METHOD=spawn", file=sys.stderr)
except Exception:  # noqa: BLE001
    pass
