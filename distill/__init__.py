"""Chain-of-thought distillation in Japanese arithmetic, as an MLflow project.

Kept import-light on purpose: entry points set offline environment variables before
anything imports transformers or huggingface_hub.
"""

__version__ = "0.1.0"


class DistillError(Exception):
    """A problem with the user's input or environment, reported as one clear message."""


from distill.log import setup_logging  # noqa: E402  (the `[distill] ...` console lines, wherever distill is used)

setup_logging()
