"""params.yaml validation: the shipped file loads, and every bad value stops a run with a message naming its key."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, run, SHIPPED_PARAMS
from pipelines.config import ParamsError, load_params
from pipelines.config.optim import AdamParams, SGDParams
from pipelines.config.params import get_dotted, with_overrides
from pipelines.config.data import TransformParams
from pipelines.config.training import ModelParams, RegularizationParams, TrainParams
from pipelines.kd import check_students

PARAMS = SHIPPED_PARAMS


def params_error(overrides: dict[str, Any]) -> str:
    """The message of the ParamsError that the shipped params.yaml with `overrides` raises."""
    with pytest.raises(ParamsError) as caught:
        load_params(PARAMS, overrides)
    return str(caught.value)


def problem_lines(message: str) -> list[str]:
    """The `key.path: problem` lines of a ParamsError message (the first line names the file)."""
    first, *rest = message.splitlines()
    assert first == f"{PARAMS}: invalid parameters"
    return [line.strip() for line in rest]


# --- the shipped file ------------------------------------------------------------------------------


def test_shipped_params_yaml_loads_with_its_values():
    raw = yaml.safe_load(PARAMS.read_text())
    params = load_params(PARAMS)
    assert params.seed == raw["seed"]
    assert params.teacher.train.epochs == raw["teacher"]["train"]["epochs"]
    assert params.teacher.optimizer.name == raw["teacher"]["optimizer"]["name"]
    assert params.student.optimizer.lr == raw["student"]["optimizer"]["lr"]
    [soft, matching] = params.distill["student_kd"].losses  # function matching: no label term
    assert [soft.method, matching.method] == [term["method"] for term in raw["distill"]["student_kd"]["losses"]]
    assert (soft.weight, soft.options, matching.weight, matching.options) == (0.9, {"temperature": 8.0}, 0.1,
                                                                              {"temperature": 1.0})
    assert params.distill["student_kd"].teacher == "live"
    assert params.student_training("student_kd").views == params.student.views == TransformParams.model_validate(
        raw["student"]["views"])
    assert list(params.augment.scale) == raw["augment"]["scale"]
    assert params.teacher.schedule.interval == raw["teacher"]["schedule"]["interval"]
    assert params.teacher.regularization.weight_decay == raw["teacher"]["regularization"]["weight_decay"]
    assert params.evaluate.near_zero_threshold == raw["evaluate"]["near_zero_threshold"]


def test_dotted_overrides_set_nested_values_without_touching_the_input():
    raw = yaml.safe_load(PARAMS.read_text())
    before = yaml.safe_dump(raw)
    changed = with_overrides(raw, {"teacher.train.epochs": 3,
                                    "distill.student_kd.optimizer": {"name": "adam", "lr": 0.1}})
    assert changed["teacher"]["train"]["epochs"] == 3
    assert changed["distill"]["student_kd"]["optimizer"] == {"name": "adam", "lr": 0.1}
    assert yaml.safe_dump(raw) == before
    assert load_params(PARAMS, {"teacher.train.epochs": 3}).teacher.train.epochs == 3


def test_a_dotted_key_reads_what_an_override_sets_and_nothing_where_the_path_leads_nowhere():
    raw = yaml.safe_load(PARAMS.read_text())
    changed = with_overrides(raw, {"teacher.train.epochs": 3, "distill.student_kd.losses.0.weight": 0.5})
    assert get_dotted(changed, "teacher.train.epochs") == 3
    assert get_dotted(changed, "distill.student_kd.losses.0.weight") == 0.5  # a list item by its position
    assert get_dotted(changed, "distill.student_kd.losses.0") == changed["distill"]["student_kd"]["losses"][0]
    for nowhere in ("teacher.train.epochz", "distill.student_kd.losses.9.weight", "seed.inner", "teacher.train.0"):
        assert get_dotted(changed, nowhere) is None


def test_an_override_below_a_plain_value_is_a_params_error():
    with pytest.raises(ParamsError, match=r"seed is a value, not a section"):
        load_params(PARAMS, {"seed.inner": 1})


# --- each class of bad value -----------------------------------------------------------------------


def test_unknown_key_is_named_with_the_allowed_keys_of_its_section():
    [line] = problem_lines(params_error({"teacher.train.epochz": 10}))
    assert line.startswith("teacher.train: ")
    assert "epochz" in line
    assert "allowed keys here: epochs, batch_size" in line


def test_unknown_top_level_key_lists_the_sections():
    [line] = problem_lines(params_error({"bogus": 1}))
    assert "bogus" in line
    for section in ("seed", "device", "data", "augment", "teacher", "student", "distill", "evaluate"):
        assert section in line.split("allowed keys here:")[1]


def test_unknown_key_inside_an_optimizer_names_the_optimizer_section_and_its_keys():
    [line] = problem_lines(params_error({"teacher.optimizer.betas": [0.9, 0.99]}))  # the teacher uses sgd
    assert line.startswith("teacher.optimizer: ")
    assert "betas" in line
    assert "allowed keys here: name, lr, momentum, nesterov, dampening" in line


def test_wrong_type_names_the_key_and_the_value_given():
    [line] = problem_lines(params_error({"teacher.train.epochs": "ten"}))
    assert line.startswith("teacher.train.epochs: ")
    assert "integer" in line
    assert "'ten'" in line


@pytest.mark.parametrize("section", ["teacher", "student"])
def test_negative_learning_rate_is_rejected(section):
    [line] = problem_lines(params_error({f"{section}.optimizer.lr": -0.01}))
    assert line.startswith(f"{section}.optimizer.lr: ")
    assert "greater than 0" in line
    assert "-0.01" in line


def method_error(overrides: dict[str, Any]) -> str:
    """The message of the ParamsError that pipelines.kd raises for the shipped students with `overrides` (its
    first line names the file read, as problem_lines checks)."""
    with pytest.raises(ParamsError) as caught:
        check_students(load_params(PARAMS, overrides))
    return str(caught.value)


def test_a_negative_weight_is_rejected_by_its_key_path():
    [line] = problem_lines(params_error({"distill.student_kd.losses.1.weight": -0.1}))
    assert line.startswith("distill.student_kd.losses.1.weight: ") and "greater than or equal to 0" in line


@pytest.mark.parametrize("weight", [0.0, 2.5])
def test_any_weight_of_zero_or_more_is_accepted(weight):
    params = load_params(PARAMS, {"distill.student_kd.losses.0.weight": weight})
    check_students(params)
    assert params.distill["student_kd"].losses[0].weight == weight


@pytest.mark.parametrize(("key", "value", "bound"), [
    ("losses.0.temperature", 0, "greater than 0"), ("losses.0.temperature", -2.0, "greater than 0"),
])
def test_a_term_s_option_out_of_range_is_named_by_its_key_path(key, value, bound):
    [line] = problem_lines(method_error({f"distill.student_kd.{key}": value}))
    assert line.startswith(f"distill.student_kd.{key}: ") and bound in line


def test_an_unknown_method_lists_the_methods():
    [line] = problem_lines(method_error({"distill.student_kd.losses.0.method": "fitnet2"}))
    assert line == ("distill.student_kd.losses.0.method: unknown method 'fitnet2'; "
                    "valid: kd, dkd, dist, fitnet, at, rkd, crd, ce")


def test_an_option_the_method_does_not_take_is_named_with_the_ones_it_takes():
    [line] = problem_lines(method_error({"distill.student_kd.losses.0.temprature": 2.0}))
    assert line.startswith("distill.student_kd.losses.0: unknown key(s) temprature; allowed keys here: temperature")


def test_a_student_without_a_loss_term_is_rejected():
    [line] = problem_lines(params_error({"distill.student_kd.losses": []}))
    assert line.startswith("distill.student_kd.losses: ") and "at least 1 item" in line


def test_the_single_method_form_of_earlier_versions_says_what_to_write_instead():
    [line] = problem_lines(params_error({"distill.student_kd": {"method": "hinton", "temperature": 4.0, "alpha": 0.9}}))
    assert "write `losses: [{method: kd, weight: a, temperature: T}, {method: ce, weight: 1 - a}]`" in line


def test_an_override_into_a_list_names_a_bad_index():
    with pytest.raises(ParamsError, match=r"override distill.student_kd.losses.5.weight: "
                                          r"'5' is not the index of one of the list's 2 items"):
        load_params(PARAMS, {"distill.student_kd.losses.5.weight": 1.0})


def test_split_ratios_must_sum_to_one():
    [line] = problem_lines(params_error({"data.split.train": 0.5}))
    assert line.startswith("data.split: ")
    total = 0.5 + 0.15 + 0.15
    assert f"must sum to 1, got {total:g}" in line


def test_unknown_optimizer_name_lists_the_valid_names():
    [line] = problem_lines(params_error({"teacher.optimizer.name": "lbfgs"}))
    assert line.startswith("teacher.optimizer: ")
    assert "'lbfgs'" in line
    assert "'sgd', 'adagrad', 'rmsprop', 'adam', 'adamw', 'nadam', 'radam'" in line


def test_unknown_schedule_name_lists_the_valid_names():
    [line] = problem_lines(params_error({"student.schedule.name": "linear"}))
    assert line.startswith("student.schedule: ")
    assert "'linear'" in line
    valid = (
        "'constant', 'step', 'multistep', 'exponential', 'cosine', 'cosine_restarts', 'onecycle', 'plateau', 'sequence'"
    )
    assert valid in line


def test_nesterov_without_momentum_is_rejected():
    # The shipped teacher uses sgd with nesterov: true.
    [line] = problem_lines(params_error({"teacher.optimizer.momentum": 0.0}))
    assert line == "teacher.optimizer: nesterov: true needs momentum > 0 and dampening 0"


def test_nesterov_with_dampening_is_rejected():
    [line] = problem_lines(params_error({"teacher.optimizer.dampening": 0.1}))
    assert line == "teacher.optimizer: nesterov: true needs momentum > 0 and dampening 0"


@pytest.mark.parametrize("batch_size", [0, "half"])
def test_batch_size_must_be_a_positive_integer_or_full(batch_size):
    lines = problem_lines(params_error({"teacher.train.batch_size": batch_size}))
    # One line per allowed form, each naming the key itself (no pydantic union tags in the path).
    assert {line.split(": ")[0] for line in lines} == {"teacher.train.batch_size"}
    assert any("'full'" in line for line in lines)
    assert all(repr(batch_size) in line for line in lines)


def test_batch_size_full_is_accepted():
    assert load_params(PARAMS, {"teacher.train.batch_size": "full"}).teacher.train.batch_size == "full"


def test_plateau_with_interval_step_is_rejected():
    [line] = problem_lines(params_error({"teacher.schedule": {"name": "plateau", "interval": "step"}}))
    assert line == "teacher.schedule: plateau steps once per epoch on its metric: use interval: epoch and warmup: 0"


def test_onecycle_with_a_warmup_is_rejected():
    [line] = problem_lines(params_error({"teacher.schedule": {"name": "onecycle", "warmup": 2}}))
    assert line == "teacher.schedule: onecycle has its own warmup (pct_start): use warmup: 0"


SEQUENCE_PARTS = [{"name": "cosine"}, {"name": "exponential", "gamma": 0.9}, {"name": "constant"}]


@pytest.mark.parametrize("milestones", [[5], [2, 5, 8]])
def test_a_sequence_needs_one_milestone_fewer_than_its_schedules(milestones):
    schedule = {"name": "sequence", "schedules": SEQUENCE_PARTS, "milestones": milestones}
    [line] = problem_lines(params_error({"teacher.schedule": schedule}))
    assert line == "teacher.schedule: 3 schedules need 2 milestones"


def test_a_sequence_part_may_not_set_its_own_interval():
    parts = [{"name": "cosine", "interval": "step"}, {"name": "constant"}]
    schedule = {"name": "sequence", "schedules": parts, "milestones": [3]}
    [line] = problem_lines(params_error({"teacher.schedule": schedule}))
    assert line == "teacher.schedule: schedules[0]: interval belong to the sequence itself"


def test_a_bad_value_inside_a_sequence_part_names_its_list_index():
    parts = [{"name": "cosine", "min_lr": -1.0}, {"name": "constant"}]
    schedule = {"name": "sequence", "schedules": parts, "milestones": [3]}
    [line] = problem_lines(params_error({"teacher.schedule": schedule}))
    assert line.startswith("teacher.schedule.schedules.0.min_lr: ")
    assert "greater than or equal to 0" in line


@pytest.mark.parametrize("milestones", [[5, 3], [3, 3]])
def test_multistep_milestones_must_increase(milestones):
    schedule = {"name": "multistep", "milestones": milestones, "gamma": 0.5}
    [line] = problem_lines(params_error({"teacher.schedule": schedule}))
    assert line == f"teacher.schedule: milestones must be strictly increasing, got {milestones}"


def test_weight_decay_mode_lists_coupled_and_decoupled():
    [line] = problem_lines(params_error({"teacher.regularization.weight_decay_mode": "l2"}))
    assert line == "teacher.regularization.weight_decay_mode: Input should be 'coupled' or 'decoupled' (got 'l2')"


def test_grad_clip_by_lists_norm_and_value():
    [line] = problem_lines(params_error({"teacher.regularization.grad_clip": {"by": "l2", "max": 1.0}}))
    assert line == "teacher.regularization.grad_clip.by: Input should be 'norm' or 'value' (got 'l2')"


@pytest.mark.parametrize(("decay", "bound"), [(1.0, "less than 1"), (0.0, "greater than 0")])
def test_ema_decay_must_be_strictly_between_zero_and_one(decay, bound):
    [line] = problem_lines(params_error({"teacher.regularization.ema_decay": decay}))
    assert line.startswith("teacher.regularization.ema_decay: ")
    assert bound in line


def test_early_stopping_patience_must_be_at_least_one():
    early_stopping = {"metric": "val_accuracy", "patience": 0}
    [line] = problem_lines(params_error({"teacher.regularization.early_stopping": early_stopping}))
    assert line.startswith("teacher.regularization.early_stopping.patience: ")
    assert "greater than or equal to 1" in line


def test_errors_inside_a_student_s_overrides_name_the_student_s_key_path():
    [line] = problem_lines(params_error({"distill.student_kd.optimizer": {"name": "sgd", "lr": -1.0}}))
    assert line.startswith("distill.student_kd.optimizer.lr: ")


def test_several_errors_are_all_reported_at_once():
    lines = problem_lines(
        params_error({"teacher.optimizer.lr": -1.0, "student.train.epochs": "x",
                      "distill.student_kd.train": {"epochs": 0, "batch_size": 32}})
    )
    assert len(lines) == 3
    named = sorted(line.split(":")[0] for line in lines)
    assert named == ["distill.student_kd.train.epochs", "student.train.epochs", "teacher.optimizer.lr"]


def test_missing_file_is_a_params_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ParamsError, match="file not found") as caught:
        load_params(missing)
    assert str(missing) in str(caught.value)


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str"), ("", "NoneType")])
def test_yaml_that_is_not_a_mapping_is_a_params_error(tmp_path, text, kind):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=f"expected a mapping of sections.*got {kind}"):
        load_params(path)


def test_invalid_yaml_syntax_is_a_params_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: [0\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)


# --- the command-line contract ---------------------------------------------------------------------


@pytest.mark.integration
def test_stage_cli_with_bad_params_exits_2_naming_the_key_and_writes_nothing(tmp_path):
    raw = yaml.safe_load(PARAMS.read_text())
    raw["teacher"]["train"]["epochs"] = "ten"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    root = tmp_path / "root"
    existing = root / "data" / "prepared" / "train.parquet"
    existing.parent.mkdir(parents=True)
    old_bytes = b"an artifact of an earlier run"
    existing.write_bytes(old_bytes)

    result = run(
        [sys.executable, "-m", "pipelines.prepare", "--params", str(bad), "--root", str(root)],
        cwd=PROJECT_ROOT,
        check=False,
    )

    assert result.returncode == 2, result.stderr
    assert "teacher.train.epochs" in result.stderr
    assert "Traceback" not in result.stderr
    assert existing.read_bytes() == old_bytes
    assert sorted(path for path in root.rglob("*") if path.is_file()) == [existing]


# --- the distilled student's settings --------------------------------------------------------------


def test_a_student_s_training_defaults_to_the_student_section_where_it_sets_none():
    params = load_params(PARAMS)
    shipped = params.distill["student_kd"]  # sets its train section, the baseline's budget, nothing else
    assert shipped.overrides == {"train": TrainParams(epochs=params.student.train.epochs, batch_size=128)}
    assert params.student_training("student_kd") == params.student.model_copy(update={"train": shipped.train})
    bare = load_params(PARAMS, {"distill.plain": {"losses": [{"method": "kd"}, {"method": "ce"}], "teacher": "live"}})
    assert bare.distill["plain"].overrides == {}
    assert bare.student_training("plain") == bare.student


def test_a_student_s_overrides_replace_those_sections_of_the_student_settings():
    params = load_params(
        PARAMS,
        {
            "distill.student_kd.train": {"epochs": 3, "batch_size": 64},
            "distill.student_kd.optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.5},
        },
    )
    training = params.student_training("student_kd")
    assert training.train == TrainParams(epochs=3, batch_size=64)
    assert training.optimizer == SGDParams(name="sgd", lr=0.2, momentum=0.5)
    # Whatever the student leaves out stays the student section's.
    assert training.model == params.student.model
    assert training.schedule == params.student.schedule
    # The student's own settings are unchanged.
    assert isinstance(params.student.optimizer, AdamParams)
    assert params.student.train.epochs == yaml.safe_load(PARAMS.read_text())["student"]["train"]["epochs"]


def test_a_student_may_override_its_model_and_regularization():
    regularization = {"weight_decay": 0.01, "weight_decay_mode": "decoupled", "label_smoothing": 0.1}
    model = {"arch": "cnn", "width": 4, "depth": 1, "dropout": 0.0}
    params = load_params(PARAMS, {"distill.student_kd.regularization": regularization,
                                  "distill.student_kd.model": model})
    training = params.student_training("student_kd")
    assert training.model == ModelParams(**model)
    assert training.regularization == RegularizationParams(**regularization)
    assert training.optimizer == params.student.optimizer
    assert params.student.regularization.label_smoothing == 0.0


# --- storage and publish ---------------------------------------------------------------------------


def test_publishing_is_off_and_names_no_bucket_in_the_shipped_file():
    params = load_params(PARAMS)
    assert not params.publish.enabled and params.publish.bucket is None and params.storage.dvc_remote is None


def test_publishing_enabled_without_a_bucket_says_which_key_to_give():
    assert "publish: publishing is enabled but no bucket is set: give publish.bucket" in problem_lines(
        params_error({"publish.enabled": True}))


def test_publishing_a_model_the_pipeline_does_not_train_lists_its_students():
    message = params_error({"publish.enabled": True, "publish.bucket": "b", "publish.students": {"teacher": "t"}})
    assert "publish.students: teacher is not a student of this pipeline; valid: student_baseline, student_kd" in message


@pytest.mark.parametrize("key, value, problem", [
    ("publish.students", {"student_kd": "Student KD"}, "published name 'Student KD'"),
    ("publish.aliases", ["latest"], "alias 'latest'"),
    ("publish.gate.metric", "latency", "unknown metric 'latency'; valid: accuracy, macro_f1"),
    ("publish.part_size_mb", 4, "greater than or equal to 5"),
    ("storage.dvc_remote", "my-bucket/distill", "expected s3://<bucket>[/<prefix>]"),
    ("storage.retry_mode", "forever", "'standard', 'adaptive' or 'legacy'"),
])
def test_a_bad_storage_or_publish_value_is_named_by_its_key(key, value, problem):
    [line] = problem_lines(params_error({key: value}))
    assert line.startswith(f"{key}:") and problem in line


def test_a_credential_in_params_is_refused_like_any_unknown_key():
    message = params_error({"storage.secret_access_key": "s3cr3t-value"})
    [line] = problem_lines(message)
    assert line.startswith("storage: unknown key(s) secret_access_key; allowed keys here: endpoint_url")
    assert "s3cr3t-value" not in message
