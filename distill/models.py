"""Turning a ModelRef into something a backend can load: a local folder or a Hub id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distill import DistillError
from distill.config import RUN_ID_RE, ModelRef
from distill.redact import redact_uri


@dataclass(frozen=True)
class LoadableModel:
    model: str          # local folder or Hub id
    tokenizer: str      # usually the same
    ref: ModelRef


def _from_mlflow(uri: str) -> tuple[str, str]:
    """An MLflow transformers-flavour model: weights under model/, tokenizer under components/."""
    import mlflow

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as e:
        raise DistillError(f"cannot fetch model {uri} from {redact_uri(mlflow.get_tracking_uri())} "
                           f"({type(e).__name__}: {e})") from None
    weights = local / "model" if (local / "model" / "config.json").is_file() else local
    tok = local / "components" / "tokenizer"
    if not (weights / "config.json").is_file():
        raise DistillError(f"{uri} is not a transformers model (no config.json under {local})")
    return str(weights), str(tok if tok.is_dir() else weights)


def materialize(ref: ModelRef) -> LoadableModel:
    """Build tiny models, download MLflow models; Hub ids and folders pass through."""
    source = ref.source
    if RUN_ID_RE.match(source):
        source = f"runs:/{source}/model"
    if source.startswith("tiny:"):
        from distill.tiny import tiny_model_dir

        path = str(tiny_model_dir(source))
        return LoadableModel(path, path, ref)
    if source.startswith(("runs:/", "models:/")):
        weights, tok = _from_mlflow(source)
        return LoadableModel(weights, tok, ref)
    return LoadableModel(source, source, ref)
