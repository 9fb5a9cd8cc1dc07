"""distill.tracking.registry on its own: the names it registers under, and nothing registered before the load-back check.

The whole path (sft registers, evaluate notes the accuracy) runs in tests/test_sft.py and tests/test_students.py.
"""

import pytest

from distill import DistillError
from distill.tracking.registry import alias_for, logged_model_name, register_student, registered_name
from tests.test_bad_input import _nan_student


def test_names_and_aliases():
    assert registered_name("qwen2.5-0.5b", "paper") == "student-qwen2.5-0.5b"  # the paper's names carry no prefix
    assert registered_name("Qwen/Qwen2.5-0.5B", "offline") == "offline-student-Qwen-Qwen2.5-0.5B"
    assert logged_model_name("qwen2.5-0.5b", "7B+72B", 42) == "student-qwen2_5-0_5b-7B_72B-seed42"
    assert alias_for("7B+72B") == "teacher-7b-72b" and alias_for("72B") == "teacher-72b"
    with pytest.raises(DistillError, match="one name or two"):
        alias_for("7B+32B+72B")


def test_a_student_that_fails_the_load_back_check_is_not_registered(tracking, tmp_path, tiny_student):
    import mlflow
    from mlflow.tracking import MlflowClient
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.tracking.registry import log_student

    folder = _nan_student(tiny_student, tmp_path / "nan-student")
    with mlflow.start_run() as run:
        info = log_student(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder),
                           "qwen2.5-0.5b", "7B", 42)
        with pytest.raises(DistillError, match="nothing was registered"):
            register_student(info.model_uri, "qwen2.5-0.5b", "7B", 42, "offline", run.info.run_id)
    assert MlflowClient().search_registered_models() == []
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["distill.logged_model"] == "student-qwen2_5-0_5b-7B-seed42" and "distill.registered_model" not in tags
