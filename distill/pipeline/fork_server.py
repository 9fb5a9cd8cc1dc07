"""What every step process of `main` needs, imported once by the fork server (distill.pipeline.steps).

Nothing here touches a GPU: a CUDA context made before the fork would break every child (each step then
notices, and its waiter starts it and every later one with spawn instead: steps.in_bad_fork). Nothing here
keeps a thread or a database connection either: neither survives a fork intact.
"""

import importlib
import os

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # torch.cuda.is_available() without initialising CUDA

# MLflow, transformers and TRL import lazily: name the modules a step reaches (model loading pulls in
# torch._dynamo and sympy, ~5 s here; MLflow's sqlite store ~6 s), or each step process imports them again.
MODULES = (
    "mlflow", "mlflow.transformers", "mlflow.store.tracking.sqlalchemy_store",  # the sqlite store: ~6 s to import
    "mlflow.store.model_registry.sqlalchemy_store", "mlflow.store.tracking.file_store",
    "mlflow.store.tracking.rest_store", "mlflow.store.artifact.local_artifact_repo",
    "mlflow.store.artifact.mlflow_artifacts_repo", "mlflow.pyfunc", "sqlalchemy.dialects.sqlite", "alembic.command",
    "git", "netrc", "torch", "datasets", "transformers", "transformers.modeling_utils", "transformers.masking_utils",
    "transformers.activations", "transformers.modeling_layers", "transformers.generation.utils",
    "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto",
    "transformers.models.qwen2.modeling_qwen2", "transformers.models.llama.modeling_llama", "transformers.trainer",
    "trl", "trl.trainer.sft_trainer", "trl.trainer.sft_config", "distill.config.models", "distill.generation.hf",
    "distill.phases.translate", "distill.phases.teacher", "distill.phases.evaluate", "distill.phases.sft",
    "distill.training.callbacks", "distill.phases.tokens", "plotly.graph_objects", "plotly.io",
)

for _name in MODULES:
    try:
        importlib.import_module(_name)
    except Exception:  # noqa: BLE001 - the step that needs it reports the error in its own process
        pass

# First-use work that every step would otherwise repeat, done once here and inherited by each fork:
# the reuse key's parse of the package (~0.7 s a step), transformers' table of checkpoint conversions
# (~0.4 s at the first model load), and MLflow's map of installed packages (~1.2 s at each log_model).
_WARM_UPS = (
    ("distill.tracking.cache_keys", "warm_code_cache", ()),
    ("transformers.conversion_mapping", "get_checkpoint_conversion_mapping", ("qwen2",)),
    ("mlflow.utils.requirements_utils", "warn_dependency_requirement_mismatches", (["mlflow"],)),
    ("distill.tracking.store", "warm_tracking_store", ()),  # the SQLite store and its compiled reads (~0.15 s a step)
)


# No model is run here. A fork taken after torch's CPU thread pool exists hangs its child at the first
# parallel kernel (tried: `main` hung at its first step); run on one thread, a forward/backward/generate
# warm-up did not hang but saved nothing measurable either.
for _module, _function, _args in _WARM_UPS:
    try:
        getattr(importlib.import_module(_module), _function)(*_args)
    except Exception:  # noqa: BLE001 - a warm-up only saves time; the step does the same work if it fails
        pass

# A preloaded library that made a CUDA context anyway breaks no step: each one forked from this server finds itself in
# torch's "bad fork", reports it before doing anything, and its waiter warns once and starts that step and every later
# one with spawn (steps.in_bad_fork, steps.run_in_process).

# The fork server ends when `main` closes it: its exit would run every loaded library's finalisers and
# atexit hooks (~3 s of a `main`'s wall time) for a process that has nothing to write. Only the fork
# server itself: a process that merely imports this module must exit normally.
if any("multiprocessing.forkserver" in arg for arg in getattr(__import__("sys"), "orig_argv", ())):
    import atexit

    atexit.register(os._exit, 0)

# Last: every object made above goes out of the collector's sight. A step's full collections then walk only
# what the step made, not the ~700,000 preloaded objects (gc.collect() in a step process: 0.56 s -> 0.001 s;
# accelerate runs one at the start of every training), and do not touch, and so copy, the shared pages.
import gc  # noqa: E402

gc.freeze()
