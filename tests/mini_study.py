"""The mini-study that tests of the later phases start from: translate -> teachers 7B and 72B -> select, through
the phases' own `run` functions on the offline preset's tiny models. conftest's `mini_study` fixture builds it
once per module; a test on another store (a team's server) calls `build` inside `current_store`."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import mlflow


@dataclass(frozen=True)
class Sizes:
    """How much of it: questions translated, the teachers' answer length, questions selected and of them the dev
    split (None: the offline preset's value). The defaults take ~1 minute on 2 CPU cores."""

    limit: int | None = 16
    max_new_tokens: int = 16
    n: int | None = 12
    dev_size: int | None = 4


@contextlib.contextmanager
def current_store(uri: str, folder: Path):
    """`uri` as this process's tracking store and `folder` as its working folder for the block, as in a user's
    shell where MLFLOW_TRACKING_URI is set; the previous ones again afterwards."""
    old_uri, old_cwd = os.environ.get("MLFLOW_TRACKING_URI"), os.getcwd()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.chdir(folder)
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
        mlflow.set_tracking_uri(None)


def build(sizes: Sizes | None = None) -> dict[str, str]:
    """The four steps in the current store: their run ids by step (translate, 7B, 72B, select)."""
    sizes = sizes or Sizes()
    from distill.phases.select import SelectParams, run as select
    from distill.phases.teacher import TeacherParams, run as teacher
    from distill.phases.translate import TranslateParams, run as translate

    runs = {"translate": translate(TranslateParams(limit=sizes.limit))}
    for name in ("7B", "72B"):
        runs[name] = teacher(TeacherParams(teacher=name, max_new_tokens=sizes.max_new_tokens))
    runs["select"] = select(SelectParams(n=sizes.n, dev_size=sizes.dev_size))
    return runs
