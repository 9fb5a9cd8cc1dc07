"""Where local files live, and the offline environment every Hub library and MLflow read at import."""

from __future__ import annotations

import os
from pathlib import Path

from distill.config.preset import Preset


def distill_home() -> Path:
    """Where built tiny models and local checkpoints live ($DISTILL_HOME, else ~/.cache/distill)."""
    return Path(os.environ.get("DISTILL_HOME", Path.home() / ".cache" / "distill"))


# What tells every Hugging Face library not to ask the Hub, and MLflow not to send usage telemetry (a
# background request in every process; here, in every step of `main`). Set by offline_env only.
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "MLFLOW_DISABLE_TELEMETRY")


def offline_env(env: dict | None = None, force: bool = False) -> dict:
    """The offline variables into `env` (os.environ by default): what is set there already wins unless `force`."""
    env = os.environ if env is None else env
    for name in OFFLINE_ENV:
        if force:
            env[name] = "1"
        else:
            env.setdefault(name, "1")
    return env


def apply_offline_env(preset: Preset) -> None:
    """Without a network every Hub lookup waits for a timeout; the offline preset never asks."""
    if preset.name == "offline":
        offline_env()
