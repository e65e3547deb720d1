"""Reading params.yaml: a key given twice, a key no stage reads, the file named in every message, student
names; and, for any text, document or override whatever, a ParamsError or valid params, never a crash."""

from __future__ import annotations

import copy
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.distillation import parse_overrides
from pipelines.check_params import CHECKED, check_params
from pipelines.config import Params, ParamsError, load_params
from pipelines.config.loader import load_yaml
from pipelines.config.params import validate_params, with_overrides
from pipelines.core.paths import Paths
from pipelines.core.stage import EXIT_BAD_PARAMS, run_stage
from pipelines.kd import check_students
from tasks.params import write_overrides
from tests.conftest import SHIPPED_PARAMS, run
from tests.test_dvc_pipeline import ran_stages

SHIPPED_TEXT = SHIPPED_PARAMS.read_text()
SHIPPED = yaml.safe_load(SHIPPED_TEXT)


def line_of(text: str, line: str) -> int:
    """The number (from 1) of the first line of `text` that is `line`, comments aside."""
    return next(index for index, each in enumerate(text.splitlines(), 1) if each.split("#")[0].rstrip() == line)


def run_check_stage(params_file: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m pipelines.check_params --params <file> --root <root>`, in this process."""
    monkeypatch.setattr(sys, "argv", ["check_params", "--params", str(params_file), "--root", str(root)])
    run_stage(check_params)


@pytest.fixture
def checked_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root where check_params passed the shipped params: its output in place."""
    root = tmp_path / "root"
    run_check_stage(SHIPPED_PARAMS, root, monkeypatch)
    return root


# --- 7. a key given twice ---------------------------------------------------------------------------


def with_repeated_keys(path: Path) -> tuple[int, int, int, int]:
    """Write the shipped params into `path` with `seed` given again at the end and the teacher's `epochs` again
    right below its first; return the lines of (seed, seed again, epochs, epochs again)."""
    lines = SHIPPED_TEXT.splitlines()
    teacher_epochs = line_of(SHIPPED_TEXT, "    epochs: 15")  # teacher.train's (the student's comes later)
    lines.insert(teacher_epochs, "    epochs: 3")
    lines.append("seed: 7")
    path.write_text("\n".join(lines) + "\n")
    return line_of(SHIPPED_TEXT, "seed: 0"), len(lines), teacher_epochs, teacher_epochs + 1


def test_a_key_given_twice_is_named_by_its_path_with_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    seed, seed_again, epochs, epochs_again = with_repeated_keys(path)

    with pytest.raises(ParamsError) as caught:
        load_params(path)

    assert str(caught.value).splitlines() == [
        f"{path}: key(s) given twice (YAML would keep only the last value without a word)",
        f"  seed: on lines {seed} and {seed_again}; keep one",
        f"  teacher.train.epochs: on lines {epochs} and {epochs_again}; keep one",
    ]


def test_a_stage_refuses_a_key_given_twice_with_exit_2_and_keeps_its_output(
        checked_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "params.yaml"
    seed, seed_again, _, _ = with_repeated_keys(path)
    before = Paths(checked_root).params_check.read_bytes()

    with pytest.raises(SystemExit) as exit_:
        run_check_stage(path, checked_root, monkeypatch)

    assert exit_.value.code == EXIT_BAD_PARAMS
    assert f"seed: on lines {seed} and {seed_again}" in capsys.readouterr().err
    assert Paths(checked_root).params_check.read_bytes() == before


def test_the_flow_s_writer_and_its_set_values_refuse_a_key_given_twice_too(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    with_repeated_keys(path)
    before = path.read_bytes()
    with pytest.raises(ParamsError, match=r"teacher\.train\.epochs: on lines"):
        write_overrides(path, {"student.train.epochs": 2})
    assert path.read_bytes() == before
    with pytest.raises(ParamsError, match=r"override 'augment.scale=\{a: 1, a: 2\}'.*\n  a: on lines 1 and 1"):
        parse_overrides(["augment.scale={a: 1, a: 2}"])


def test_a_key_replacing_a_merged_one_is_no_repetition(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"  # `<<: *anchor`, then keys of its own: YAML's way to share settings
    path.write_text(SHIPPED_TEXT.replace("\nteacher:", "\nteacher: &teacher", 1)
                    .replace("\nstudent:", "\nstudent:\n  <<: *teacher\n", 1))
    assert load_params(path).student == load_params(SHIPPED_PARAMS).student


# --- 8. a key no stage reads ------------------------------------------------------------------------


def test_a_top_level_key_no_stage_reads_stops_the_check_stage_with_exit_2(
        checked_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(SHIPPED_TEXT + "bogus_key: 1\n")
    before = Paths(checked_root).params_check.read_bytes()

    with pytest.raises(SystemExit) as exit_:
        run_check_stage(path, checked_root, monkeypatch)

    assert exit_.value.code == EXIT_BAD_PARAMS
    message = capsys.readouterr().err
    assert f"{path}: invalid parameters" in message and "unknown key(s) bogus_key; allowed keys here: seed" in message
    assert Paths(checked_root).params_check.read_bytes() == before


def before_the_resume_section(text: str) -> str:
    """`text` as params.yaml said it before the `resume` section got its name: `checkpoint`, whose `resume` key
    is now `mode`."""
    return text.replace("\nresume:", "\ncheckpoint:", 1).replace("\n  mode: auto", "\n  resume: auto", 1)


def test_a_params_file_with_the_old_checkpoint_section_stops_with_exit_2_naming_its_new_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(before_the_resume_section(SHIPPED_TEXT))

    with pytest.raises(SystemExit) as exit_:
        run_check_stage(path, tmp_path / "root", monkeypatch)

    assert exit_.value.code == EXIT_BAD_PARAMS
    assert capsys.readouterr().err.splitlines() == [
        f"{path}: invalid parameters",
        f"  checkpoint: this section is now called resume (and its key resume is now mode): rename it in {path}",
    ]


def test_the_old_checkpoint_section_is_named_beside_the_file_s_other_problems() -> None:
    raw = yaml.safe_load(before_the_resume_section(SHIPPED_TEXT))
    with pytest.raises(ParamsError) as caught:
        validate_params({**raw, "seed": -1}, source="old.yaml")
    assert str(caught.value).splitlines() == [
        "old.yaml: invalid parameters",
        "  checkpoint: this section is now called resume (and its key resume is now mode): rename it in old.yaml",
        "  seed: Input should be greater than or equal to 0 (got -1)",
    ]


def test_the_check_stage_checks_the_methods_options_too_and_writes_nothing_then(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, path)
    write_overrides(path, {"distill.student_kd.losses.0.temperature": -1.0})

    with pytest.raises(SystemExit) as exit_:
        run_check_stage(path, tmp_path / "root", monkeypatch)

    assert exit_.value.code == EXIT_BAD_PARAMS
    assert "distill.student_kd.losses.0.temperature: Input should be greater than 0" in capsys.readouterr().err
    assert not (tmp_path / "root").exists()


def test_the_check_stage_writes_the_same_bytes_for_any_valid_params(checked_root: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, path)
    write_overrides(path, {"seed": 5, "teacher.train.epochs": 2})
    run_check_stage(path, checked_root, monkeypatch)
    assert Paths(checked_root).params_check.read_text() == CHECKED  # so no stage after it sees a change


@pytest.mark.slow
def test_dvc_repro_stops_at_a_key_no_stage_reads_and_runs_nothing(reproduced_project: Path) -> None:
    project = reproduced_project  # after one dvc repro
    artifacts = {path: path.read_bytes() for folder in ("data", "models") for path in (project / folder).rglob("*")
                 if path.is_file()}
    good = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(good + "bogus_key: 1\n")

    failed = run(["dvc", "repro"], project, check=False)

    output = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "exited with 2" in output  # DVC's own exit code for a failed stage is 255
    assert "unknown key(s) bogus_key" in output
    assert ran_stages(failed.stdout) == ["check_params"]
    assert {path: path.read_bytes() for path in artifacts} == artifacts
    (project / "params.yaml").write_text(good)
    assert "Data and pipelines are up to date." in run(["dvc", "repro"], project).stdout


# --- 11. the file named is the file read ------------------------------------------------------------


def test_every_params_error_names_the_file_given_with_params(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "other.yaml"
    shutil.copy(SHIPPED_PARAMS, other)
    write_overrides(other, {"distill.student_kd.losses.0.temperatur": 2.0})  # a method's option: pipelines.kd's check
    with pytest.raises(SystemExit):
        run_check_stage(other, tmp_path / "root", monkeypatch)
    assert capsys.readouterr().err.startswith(f"{other}: invalid parameters\n")

    with pytest.raises(ParamsError, match=f"^{other}: invalid parameters"):
        check_students(load_params(other))  # as the distill and teacher_features stages call it
    with pytest.raises(ParamsError, match=f"^{other}: invalid parameters"):
        load_params(other, {"seed": -1})


# --- 12. a student's name ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "path"), [("a/b", "distill.a/b"), ("my student", "distill.my student"),
                                            ("..", "distill.'..'")])
def test_a_student_name_that_cannot_name_a_stage_and_a_file_is_named_by_its_key_path(name: str, path: str) -> None:
    raw = copy.deepcopy(SHIPPED)
    raw["distill"] = {name: raw["distill"]["student_kd"]}
    with pytest.raises(ParamsError) as caught:
        validate_params(raw)
    assert str(caught.value).splitlines()[1:] == [
        f"  {path}: a student's name names its DVC stage and its model file: use only letters, digits, '_' and '-'"]


def test_a_student_cannot_take_a_name_of_the_pipeline_s_own_models() -> None:
    raw = copy.deepcopy(SHIPPED)
    raw["distill"] = {"teacher": raw["distill"]["student_kd"]}
    with pytest.raises(ParamsError, match="\n  distill.teacher: the pipeline's own models are named teacher and "
                                          "student_baseline: name the student otherwise$"):
        validate_params(raw)


def test_no_student_at_all_is_named_by_the_distill_key() -> None:
    with pytest.raises(ParamsError, match="\n  distill: no student: name at least one"):
        validate_params({**SHIPPED, "distill": {}})


def test_a_study_loss_is_named_like_a_student() -> None:
    with pytest.raises(ParamsError, match="\n  kd_study.losses.a/b: a student's name names its DVC stage"):
        load_params(SHIPPED_PARAMS, {"kd_study.losses": {"a/b": [{"method": "ce"}]}})


# --- anything at all: a ParamsError or valid params -------------------------------------------------


def paths_of(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a parsed document, list items by position."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    return [prefix] + [path for key, value in items for path in paths_of(value, (*prefix, key))]


def _at(node: Any, path: tuple) -> Any:
    for key in path:
        node = node[key]
    return node


SHIPPED_PATHS = [".".join(map(str, path)) for path in paths_of(SHIPPED)[1:]]
KEY_PARTS = sorted({part for path in SHIPPED_PATHS for part in path.split(".")} | {"", "x", "-1", "99", "²", "٣"})

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**30) | st.floats()
           | st.text(max_size=10) | st.sampled_from(["auto", "cpu", "sgd", "cosine", "kd", "ce", "full", "step"]))
keys = st.text(max_size=8) | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False)
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                         max_leaves=12)
dotted_keys = (st.sampled_from(SHIPPED_PATHS).flatmap(lambda path: st.lists(st.sampled_from(KEY_PARTS), max_size=2)
                                                     .map(lambda extra: ".".join([path, *extra])))
               | st.lists(st.sampled_from(KEY_PARTS), min_size=1, max_size=4).map(".".join) | st.text(max_size=12))
SHIPPED_LEAVES = [(".".join(map(str, path)), value) for path in paths_of(SHIPPED)[1:]
                  if not isinstance(value := _at(SHIPPED, path), (dict, list))]


def like(value: Any) -> st.SearchStrategy:
    """Values of the kind `value` is, so that an override of it is often valid."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-2, 3 * value + 2)
    if isinstance(value, float):
        return st.floats(-1.0, 2 * value + 1.0)
    return st.sampled_from([value, None, 0]) | scalars


leaf_change = st.sampled_from(SHIPPED_LEAVES).flatmap(lambda leaf: st.tuples(st.just(leaf[0]), like(leaf[1])))
leaf_changes = st.lists(leaf_change, min_size=1, max_size=3).map(dict)
overrides = st.dictionaries(dotted_keys, documents, max_size=3) | leaf_changes
yaml_pieces = st.sampled_from(["a", "seed", "distill", ":", " ", "\n", "  ", "- ", "[", "]", "{", "}", ",", "&x ",
                               "*x", "<<: ", "!!binary ", "!!python/name:os.system ", "? ", "'", '"', "#", "1" * 5000,
                               "2024-02-30", "0x1F", ".nan", "~", "|\n", "\t", "\ufeff", "%YAML 1.1\n---\n", "..."])
yaml_texts = st.lists(yaml_pieces, max_size=30).map("".join) | st.text(max_size=60)


@st.composite
def edited_shipped_texts(draw: st.DrawFn) -> str:
    """The shipped file with a few lines deleted, repeated, swapped, re-indented or replaced by YAML bits."""
    lines = SHIPPED_TEXT.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(lines) - 1))
        edit = draw(st.sampled_from(["delete", "repeat", "swap", "indent", "replace"]))
        if edit == "delete":
            del lines[at]
        elif edit == "repeat":
            lines.insert(at, lines[at])
        elif edit == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif edit == "indent":
            lines[at] = " " * draw(st.integers(0, 6)) + lines[at].lstrip()
        else:
            lines[at] = draw(yaml_texts)
    return "\n".join(lines) + "\n"


def params_or_error(load: Callable[[], Params]) -> Params | None:
    """What `load()` returns, or None where it raised a ParamsError; anything else it raises fails the test."""
    try:
        params = load()
    except ParamsError as error:
        assert str(error).strip(), "a ParamsError says what is wrong"
        return None
    try:  # the next check of valid params (the methods' options) may refuse them, but only so
        check_students(params)
    except ParamsError:
        pass
    return params


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(text=yaml_texts | edited_shipped_texts())
def test_any_text_is_valid_params_or_a_params_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    params_or_error(lambda: load_params(path))


@PROPERTY
@given(text=yaml_texts | edited_shipped_texts())
def test_the_reader_reads_what_yaml_safe_load_reads_but_a_key_given_twice(text: str) -> None:
    try:
        expected = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError):
        with pytest.raises(ParamsError, match=r"^<text>: (not valid YAML|not readable|key\(s\) given twice)"):
            load_yaml(text, "<text>")
        return
    try:
        assert repr(load_yaml(text, "<text>")) == repr(expected)
    except ParamsError as error:
        assert "given twice" in str(error)


@PROPERTY
@given(document=documents | st.dictionaries(keys, documents, max_size=6))
def test_any_document_is_valid_params_or_a_params_error(tmp_path: Path, document: Any) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(document))
    params_or_error(lambda: load_params(path))
    if isinstance(document, dict):
        params_or_error(lambda: validate_params(document))  # keys YAML would not give, as a caller's mapping may


@PROPERTY
@given(changes=overrides)
def test_any_override_of_the_shipped_file_is_valid_params_or_a_params_error(changes: dict[str, Any]) -> None:
    raw = copy.deepcopy(SHIPPED)
    params_or_error(lambda: validate_params(with_overrides(raw, changes)))
    assert raw == SHIPPED, "the input is left as it was"


@settings(PROPERTY, max_examples=40)  # (each example rewrites the whole file)
@given(changes=leaf_changes)
def test_valid_overrides_the_flow_writes_into_the_file_read_back_as_validated(tmp_path: Path,
                                                                              changes: dict[str, Any]) -> None:
    params = params_or_error(lambda: load_params(SHIPPED_PARAMS, changes))
    if params is not None:
        path = tmp_path / "params.yaml"
        shutil.copy(SHIPPED_PARAMS, path)
        write_overrides(path, changes)
        assert load_params(path).model_dump_json() == params.model_dump_json()
