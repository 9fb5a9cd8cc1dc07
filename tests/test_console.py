"""A quiet console by default: the progress bars of quick work off, `--verbose true` shows everything."""

import pytest

from distill import DistillError
from distill.cli import QUIET_ENV, quiet_console


@pytest.fixture
def clean_env(monkeypatch):
    for k in (*QUIET_ENV, "DISTILL_VERBOSE"):  # set first so that teardown restores what was there
        monkeypatch.setenv(k, "x")
        monkeypatch.delenv(k)
    return monkeypatch


def test_quiet_by_default_and_what_the_user_set_wins(clean_env):
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
