"""Names forgiving where that is safe (case, full width), strict where it is not (unknown names, a model twice)."""

from __future__ import annotations

import pytest
import yaml

from distill import DistillError
from distill.config.models import resolve_model, resolve_names, resolve_role
from distill.config.names import close_names, did_you_mean, match_name, name_key
from distill.config.presets import PRESET_DIR, load_preset
from distill.phases.report import grid_names
from distill.phases.sft import canonical_teacher
from distill.pipeline import MainParams
from distill.pipeline.planner import resolve_grid
from distill.tracking.registry import alias_for


@pytest.fixture(scope="module")
def offline():
    return load_preset("offline")


@pytest.mark.parametrize("typed", ["7B", "7b", " 7B ", "７Ｂ", "７ｂ"])
def test_teacher_in_any_case_or_width(offline, typed):
    """A teacher in any case or width is the preset's 7B."""
    ref = resolve_role(typed, offline, "teacher")
    assert (ref.name, ref.source, ref.role) == ("7B", "tiny:teacher-7b", "teacher")


@pytest.mark.parametrize("typed", ["QWEN2.5-0.5B", "Qwen2.5-0.5b", "ｑｗｅｎ２．５－０．５ｂ"])
def test_student_in_any_case_or_width(offline, typed):
    """A student in any case or width is the preset's spelling."""
    assert resolve_model(typed, offline).name == "qwen2.5-0.5b"


def test_unknown_name_did_you_mean(offline):
    """An unknown name gets the list and a did-you-mean."""
    with pytest.raises(DistillError) as e:
        resolve_role("7BB", offline, "teacher")
    assert "did you mean '7B' or '72B'?" in str(e.value) and "known names: 7B, 14B, 32B, 72B" in str(e.value)
    with pytest.raises(DistillError, match=r"did you mean 'qwen2.5-0.5b'"):
        resolve_role("qwen2.5-05b", offline, "student")
    with pytest.raises(DistillError) as e:   # nothing close: the list, no guess
        resolve_role("gpt2", offline, "student")
    assert "did you mean" not in str(e.value) and "known names: qwen2.5-0.5b, qwen2.5-1.5b" in str(e.value)


def test_a_name_of_the_other_role_says_so(offline):
    with pytest.raises(DistillError, match=r"'qwen2.5-0.5b' is a student of preset 'offline', not a teacher"):
        resolve_role("qwen2.5-0.5b", offline, "teacher")


def test_hub_ids_and_uris_are_not_touched(offline):
    assert resolve_model("Qwen/Qwen2.5-7B-Instruct", offline).source == "Qwen/Qwen2.5-7B-Instruct"
    assert resolve_model("models:/x@teacher-7b", offline).name == "models:/x@teacher-7b"


def test_matching_is_nfkc_trim_casefold():
    """The matching rule is NFKC, trim, casefold, and nothing looser."""
    assert name_key(" ７２Ｂ ") == "72b" and match_name("７２ｂ", ["7B", "72B"]) == "72B"
    assert match_name("72", ["7B", "72B"]) is None and match_name("7-B", ["7B"]) is None
    assert close_names("72", ["7B", "72B"]) == ["72B"] and did_you_mean("zzz", ["7B"]) == ""


def test_teacher_mix_in_presets_spelling(offline):
    """A mix of teachers comes back in the preset's spelling."""
    assert canonical_teacher("7b+72b", offline) == "7B+72B"
    assert canonical_teacher("７Ｂ＋７２Ｂ", offline) == "7B+72B"
    assert alias_for(canonical_teacher("７ｂ", offline)) == alias_for("7B") == "teacher-7b"
    with pytest.raises(DistillError, match="mixes 7B with itself"):
        canonical_teacher("7B+7b", offline)
    with pytest.raises(DistillError, match="did you mean '72B'"):
        canonical_teacher("7B+72", offline)
    # with a train_file the teacher is only a label for the data: a preset name is still spelled the preset's way
    assert canonical_teacher("my-data", offline, labels=True) == "my-data"
    assert canonical_teacher("72b", offline, labels=True) == "72B"


def test_main_grid_spelling_and_twice():
    """`main`'s grid is in the preset's spelling, and refuses a model twice."""
    grid = resolve_grid(MainParams(teachers=["7b", "７２Ｂ"], students=["QWEN2.5-0.5B"]))
    teachers, students = grid.teachers, grid.students
    assert (teachers, students) == (["7B", "72B"], ["qwen2.5-0.5b"])
    with pytest.raises(DistillError, match=r"teachers names 7B twice \('7B', '7b', '72B'\)"):
        resolve_grid(MainParams(teachers=["7B", "7b", "72B"]))


def test_resolve_names_lists_spellings(offline):
    """`resolve_names` lists every typed spelling."""
    assert resolve_names(["llm-jp-3.1-1.8B", "Sarashina2.2-1B"], offline, "student", "students") == [
        "llm-jp-3.1-1.8b", "sarashina2.2-1b"]


def test_report_grid_spelling_and_typo():
    """The report grid takes any spelling and guesses a typo."""
    assert grid_names(["７ｂ", "72b"], ["7B", "14B", "32B", "72B"], "teachers") == ["7B", "72B"]
    with pytest.raises(DistillError, match=r"unknown name '7BB' in teachers; known teachers: 7B, 14B, 32B, 72B; "
                                           r"did you mean '7B' or '72B'\?$"):
        grid_names(["7BB"], ["7B", "14B", "32B", "72B"], "teachers")


def _preset_file(tmp_path, **changes):
    data = dict(yaml.safe_load((PRESET_DIR / "offline.yaml").read_text()), name="names-test")  # not `offline`'s file
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return str(path)


def test_preset_lists_spelled_as_tables(tmp_path):
    """A preset's own lists are spelled like its tables."""
    preset = load_preset(_preset_file(tmp_path, grid__teachers=["7b", "７２Ｂ"], grid__students=["QWEN2.5-0.5B"],
                                      judge__teachers=["7b"]))
    assert ((preset.grid.teachers, preset.grid.students, preset.judge.teachers)
            == (["7B", "72B"], ["qwen2.5-0.5b"], ["7B"]))


def test_judged_non_teacher_refused(tmp_path):
    """A judged teacher that is no teacher is refused."""
    # before: `judged = [t for t in judge.teachers if t in teachers] or teachers` judged every teacher, silently
    with pytest.raises(DistillError,
                       match=r"judge.teachers names '9B', which is no teacher of the preset; teachers: 7B"):
        load_preset(_preset_file(tmp_path, judge__teachers=["7B", "9B"]))


def test_names_matching_as_one_refused(tmp_path):
    """Two table names that match as one are refused."""
    data = yaml.safe_load((PRESET_DIR / "offline.yaml").read_text())
    teachers = dict(data["teachers"], **{"7b": {"model": "tiny:teacher-7b"}})
    with pytest.raises(DistillError, match=r"teachers '7B' and '7b' are one name"):
        load_preset(_preset_file(tmp_path, teachers=teachers))
