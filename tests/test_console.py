"""A quiet console by default: the progress bars of quick work off, `--verbose true` shows everything."""

import pytest

from distill import DistillError
from distill.cli import quiet_console
from distill.log import QUIET_ENV


@pytest.fixture
def clean_env(monkeypatch):
    for k in (*QUIET_ENV, "DISTILL_VERBOSE"):  # set first so that teardown restores what was there
        monkeypatch.setenv(k, "x")
        monkeypatch.delenv(k)
    return monkeypatch


def test_quiet_by_default_user_setting_wins(clean_env):
    """Quiet by default, and what the user set wins."""
    clean_env.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    import os

    assert quiet_console(["--preset", "offline"]) == ["--preset", "offline"]
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false" and "DISTILL_VERBOSE" not in os.environ
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"


def test_verbose_shows_everything(clean_env):
    import os

    assert quiet_console(["--verbose", "true", "--preset", "offline"]) == ["--preset", "offline"]
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ and os.environ["DISTILL_VERBOSE"] == "1"
    with pytest.raises(DistillError, match="verbose: expected true or false, got 'loud'"):
        quiet_console(["--verbose=loud"])


def test_quiet_hides_library_chatter(clean_env):
    """Quiet hides library chatter, and verbose keeps it.

    TRL's dataset-map bars, mlflow.transformers' model-card/license/`resolved as` lines, transformers'
    checkpoint-sorting note and MLflow's registry prints are off by default; verbose shows them."""
    import io
    import logging
    import os

    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM, eprint

    from distill.log import QUIET_LOGGERS, quiet_loggers, quiet_mlflow_prints

    levels = {n: logging.getLogger(n).level for n in QUIET_LOGGERS}
    try:
        quiet_console([])
        assert os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
        quiet_loggers()
        assert logging.getLogger("mlflow.transformers").getEffectiveLevel() == logging.ERROR
        assert not logging.getLogger("transformers.trainer_utils").isEnabledFor(logging.WARNING)
        err = io.StringIO()
        clean_env.setattr("sys.stderr", err)
        with quiet_mlflow_prints():
            eprint("Successfully registered model 'x'.")
        assert err.getvalue() == "" and MLFLOW_LOGGING_STREAM.enabled  # back on after the block

        for k in QUIET_ENV:
            clean_env.delenv(k, raising=False)
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
        quiet_console(["--verbose", "true"])
        quiet_loggers()
        assert "HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ
        assert logging.getLogger("mlflow.transformers").isEnabledFor(logging.WARNING)
        with quiet_mlflow_prints():
            eprint("Created version '1' of model 'x'.")
        assert "Created version" in err.getvalue()
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def test_checkpointing_named_as_transformers(tmp_path):
    """sft names gradient checkpointing as the installed transformers does.

    transformers >= 5.23 warns (FutureWarning) at `gradient_checkpointing=`; 5.20-5.22 (5.20 is what the vLLM
    extra resolves to) refuse `activation_checkpointing=` with a TypeError. Training builds its SFTConfig with
    whichever name the installed version has, and the setting arrives either way."""
    import warnings

    from distill.training.sft_config import build

    for on in (True, False):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            args = build({"gradient_checkpointing": on}, output_dir=str(tmp_path), report_to="none", use_cpu=True)
        assert args.gradient_checkpointing is on and getattr(args, "activation_checkpointing", on) is on
        assert not [w for w in caught if "checkpointing" in str(w.message)], [str(w.message) for w in caught]


def test_console_lines_rank_aware_logging(clean_env, capsys):
    """Console lines go through logging, at a rank-aware level."""
    import logging

    from distill.log import setup_logging

    log = logging.getLogger("distill.pipeline")
    for k in ("RANK", "LOCAL_RANK"):
        clean_env.delenv(k, raising=False)
    try:
        setup_logging()
        log.info("main: translate: ran abc (1.0s)")
        log.debug("hidden unless verbose")
        assert capsys.readouterr().err == "[distill] main: translate: ran abc (1.0s)\n"
        clean_env.setenv("RANK", "1")  # another process of a distributed launch: warnings only
        setup_logging()
        log.info("not on rank 1")
        log.warning("warning: on every rank")
        assert capsys.readouterr().err == "[distill] warning: on every rank\n"
        clean_env.delenv("RANK")
        quiet_console(["--verbose", "true"])
        setup_logging()
        log.debug("shown with verbose")
        assert capsys.readouterr().err == "[distill] shown with verbose\n"
        ours = [h for h in logging.getLogger("distill").handlers if type(h).__module__ == "distill.log"]
        assert len(ours) == 1  # set up again, never a second handler
    finally:
        clean_env.delenv("DISTILL_VERBOSE", raising=False)
        clean_env.delenv("RANK", raising=False)
        setup_logging()
