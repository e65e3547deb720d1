"""Evaluation: calibration and classification metrics on hand-worked examples, and the evaluate stage end to end."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from torch import nn

from pipelines.config import load_params
from pipelines.engine.checkpoint import load_model
from pipelines.evaluate import evaluate
from pipelines.evaluation.comparison import gap_recovered
from pipelines.evaluation.report import render_report
from pipelines.report import report
from pipelines.evaluation.metrics import classification_metrics, expected_calibration_error, near_zero_fraction
from pipelines.models import count_parameters
from pipelines.core.paths import Paths
from pipelines.engine.inference import predict_logits
from tests.conftest import SHIPPED_PARAMS, TINY_OVERRIDES, read_image_set

# --- expected calibration error --------------------------------------------------------------------

# Four predictions over two classes: (probabilities, label).
CALIBRATION_EXAMPLE = [
    ([0.90, 0.10], 0),  # confidence 0.90, correct
    ([0.05, 0.95], 1),  # confidence 0.95, correct
    ([0.60, 0.40], 1),  # confidence 0.60, wrong
    ([0.35, 0.65], 1),  # confidence 0.65, correct
]


def calibration_tensors(dtype: torch.dtype):
    probs = torch.tensor([probs for probs, _ in CALIBRATION_EXAMPLE], dtype=dtype)
    labels = torch.tensor([label for _, label in CALIBRATION_EXAMPLE])
    return probs, labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ece_weights_each_bins_confidence_accuracy_gap_by_its_share_of_samples(dtype):
    # 4 bins: (0, .25], (.25, .5], (.5, .75], (.75, 1].
    # Bin (.75, 1]: confidences .90 and .95, both correct: |accuracy 1 - confidence .925| = .075, weight 2/4.
    # Bin (.5, .75]: confidences .60 (wrong) and .65 (correct): |accuracy .5 - confidence .625| = .125, weight 2/4.
    expected = 2 / 4 * abs(1.0 - (0.90 + 0.95) / 2) + 2 / 4 * abs(0.5 - (0.60 + 0.65) / 2)
    probs, labels = calibration_tensors(dtype)
    assert expected_calibration_error(probs, labels, bins=4) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ece_with_one_bin_is_the_gap_between_mean_confidence_and_accuracy(dtype):
    # The under- and over-confident bins above partly cancel once they share a bin.
    expected = abs((0.90 + 0.95 + 0.60 + 0.65) / 4 - 3 / 4)
    probs, labels = calibration_tensors(dtype)
    assert expected_calibration_error(probs, labels, bins=1) == pytest.approx(expected, abs=1e-6)


def test_ece_of_confident_correct_predictions_is_zero():
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert expected_calibration_error(probs, torch.tensor([0, 2]), bins=15) == 0.0


# --- classification metrics ------------------------------------------------------------------------


def test_classification_metrics_on_a_hand_worked_example():
    labels = [0, 0, 1, 1, 2, 2]
    predictions = [0, 1, 1, 1, 2, 0]
    logits = torch.full((6, 3), -1.0)
    logits[torch.arange(6), torch.tensor(predictions)] = 1.0

    metrics = classification_metrics(logits, torch.tensor(labels), ["zero", "one", "two"], calibration_bins=10)

    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # Rows are the actual class, columns the predicted one.
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # zero: precision 1/2, recall 1/2; one: precision 2/3, recall 2/2; two: precision 1/1, recall 1/2.
    by_hand = {"zero": (1 / 2, 1 / 2), "one": (2 / 3, 1.0), "two": (1.0, 1 / 2)}
    f1 = {name: 2 * p * r / (p + r) for name, (p, r) in by_hand.items()}
    for name, (precision, recall) in by_hand.items():
        assert metrics["per_class"][name]["precision"] == pytest.approx(precision)
        assert metrics["per_class"][name]["recall"] == pytest.approx(recall)
        assert metrics["per_class"][name]["f1"] == pytest.approx(f1[name])
        assert metrics["per_class"][name]["support"] == 2
    assert metrics["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    # Each row's softmax gives the predicted class e / (e + 2/e) and each other class (1/e) / (e + 2/e).
    p_hit = math.e / (math.e + 2 / math.e)
    p_miss = (1 / math.e) / (math.e + 2 / math.e)
    assert metrics["nll"] == pytest.approx(-(4 * math.log(p_hit) + 2 * math.log(p_miss)) / 6, rel=1e-6)
    # Every prediction has confidence p_hit: one bin, accuracy 4/6.
    assert metrics["ece"] == pytest.approx(abs(p_hit - 4 / 6), rel=1e-5)


def test_a_class_never_predicted_gets_zero_precision_not_an_error():
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    metrics = classification_metrics(logits, torch.tensor([0, 1]), ["a", "b"], calibration_bins=5)
    assert metrics["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert metrics["confusion_matrix"] == [[1, 0], [1, 0]]


# --- sparsity ----------------------------------------------------------------------------------------


def test_near_zero_fraction_counts_weights_below_the_threshold_and_ignores_biases_and_norms():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        # 8 weights: 0, 5e-4, -9e-4 and 1e-12 are below 1e-3; 1e-3 itself, -0.002, 0.5 and -3 are not.
        model[0].weight.copy_(torch.tensor([[0.0, 5e-4, -9e-4], [1e-3, -0.002, 0.5]]))
        model[2].weight.copy_(torch.tensor([[1e-12, -3.0]]))
        model[0].bias.zero_()  # biases and BatchNorm's bias are zero, but they are not weights
    assert near_zero_fraction(model, threshold=1e-3) == pytest.approx(4 / 8)
    assert near_zero_fraction(model, threshold=1.0) == pytest.approx(7 / 8)
    assert near_zero_fraction(model, threshold=1e-15) == pytest.approx(1 / 8)


# --- the evaluate stage ----------------------------------------------------------------------------

MODELS = ("teacher", "student_baseline", "student_kd")  # those of the shipped params.yaml

METRIC_KEYS = {
    "accuracy", "macro_f1", "per_class", "confusion_matrix", "ece", "nll", "agreement_with_teacher",
    "agreement_per_class", "params", "near_zero_weights", "checkpoint_bytes", "latency_ms_batch_1",
    "latency_ms_batch_256",
}


@pytest.fixture(scope="module")
def evaluated(trained_pipeline, tmp_path_factory):
    """The shared tiny run copied to a fresh root and evaluated there: (params, paths, returned results)."""
    params, shared = trained_pipeline
    paths = Paths(tmp_path_factory.mktemp("evaluated") / "root")
    shutil.copytree(shared.root, paths.root)
    results = evaluate(params, paths)
    report(params, paths)
    return params, paths, results


@pytest.fixture(scope="module")
def test_set(evaluated):
    _, paths, _ = evaluated
    return read_image_set(paths.split("test"))


def test_eval_json_has_exactly_the_three_models_with_every_metric(evaluated):
    _, paths, results = evaluated
    written = json.loads(paths.eval_metrics.read_text())
    assert list(written) == ["teacher", "student_baseline", "student_kd"]
    assert written == json.loads(json.dumps(results))
    for name in MODELS:
        assert set(written[name]) == METRIC_KEYS, name


def test_eval_metrics_are_those_of_the_checkpoints_on_the_test_split(evaluated, test_set):
    params, paths, results = evaluated
    for name in MODELS:
        model, _ = load_model(paths.model(name))
        logits = predict_logits(model, test_set.images, torch.device("cpu"), batch_size=64)
        accuracy = float((logits.argmax(1) == test_set.labels).float().mean())
        assert results[name]["accuracy"] == pytest.approx(accuracy, abs=1e-6)
        assert results[name]["params"] == count_parameters(model)
        assert results[name]["checkpoint_bytes"] == paths.model(name).stat().st_size
        assert 0.0 <= results[name]["near_zero_weights"] <= 1.0
        threshold = params.evaluate.near_zero_threshold
        assert results[name]["near_zero_weights"] == near_zero_fraction(model, threshold)
        matrix = results[name]["confusion_matrix"]
        assert len(matrix) == len(test_set.class_names) and sum(map(sum, matrix)) == len(test_set)
        assert set(results[name]["per_class"]) == set(test_set.class_names)
        assert 0.0 <= results[name]["ece"] <= 1.0 and results[name]["nll"] > 0.0
        for batch_size in params.evaluate.latency_batch_sizes:
            assert results[name][f"latency_ms_batch_{batch_size}"] > 0.0


def test_teacher_agrees_with_itself_and_students_agreement_matches_their_predictions(evaluated, test_set):
    _, paths, results = evaluated
    assert results["teacher"]["agreement_with_teacher"] == 1.0
    teacher_rows = json.loads(paths.confusion_plot("teacher").read_text())
    for name in ("student_baseline", "student_kd"):
        rows = json.loads(paths.confusion_plot(name).read_text())
        same = sum(row["predicted"] == ours["predicted"] for row, ours in zip(rows, teacher_rows))
        assert results[name]["agreement_with_teacher"] == pytest.approx(same / len(test_set))


def test_agreement_by_class_is_the_share_of_each_class_s_images_predicted_as_the_teacher_predicts(
        evaluated, test_set):
    _, paths, results = evaluated
    teacher_rows = json.loads(paths.confusion_plot("teacher").read_text())
    assert results["teacher"]["agreement_per_class"] == dict.fromkeys(test_set.class_names, 1.0)
    for name in ("student_baseline", "student_kd"):
        rows = json.loads(paths.confusion_plot(name).read_text())
        for class_name in test_set.class_names:
            pairs = [(row["predicted"], ours["predicted"]) for row, ours in zip(rows, teacher_rows)
                     if row["actual"] == class_name]
            same = sum(mine == teachers for mine, teachers in pairs)
            assert results[name]["agreement_per_class"][class_name] == pytest.approx(same / len(pairs))


def test_confusion_plots_hold_one_actual_predicted_row_per_test_image(evaluated, test_set):
    _, paths, results = evaluated
    actual = [test_set.class_names[label] for label in test_set.labels.tolist()]
    for name in MODELS:
        rows = json.loads(paths.confusion_plot(name).read_text())
        assert len(rows) == len(test_set)
        assert all(set(row) == {"actual", "predicted"} for row in rows)
        assert [row["actual"] for row in rows] == actual
        assert {row["predicted"] for row in rows} <= set(test_set.class_names)
        hits = sum(row["actual"] == row["predicted"] for row in rows)
        assert results[name]["accuracy"] == pytest.approx(hits / len(test_set))
        # The plot rows count up to the confusion matrix of eval.json.
        index = {class_name: i for i, class_name in enumerate(test_set.class_names)}
        matrix = [[0] * len(index) for _ in index]
        for row in rows:
            matrix[index[row["actual"]]][index[row["predicted"]]] += 1
        assert matrix == results[name]["confusion_matrix"]


def test_report_has_a_table_row_per_model(evaluated, test_set):
    params, paths, results = evaluated
    report = paths.report.read_text()
    assert report.startswith("# Distillation report")
    assert f"{len(test_set)} test images" in report
    table = [line for line in report.splitlines() if line.startswith("| ")]
    for name in MODELS:
        [row] = [line for line in table if line.startswith(f"| {name} |")]
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1] == f"{results[name]['params']:,}"
        assert cells[3] == f"{results[name]['near_zero_weights']:.1%}"
        assert cells[4] == f"{results[name]['accuracy']:.2%}"
        assert len(cells) == 9 + len(params.evaluate.latency_batch_sizes)


def test_the_report_is_rendered_from_eval_json_the_training_logs_and_the_card_alone(evaluated, tmp_path):
    params, paths, _ = evaluated
    only_records = Paths(tmp_path)  # no model, no data: the HTML report's figures come from the records too
    only_records.eval_metrics.parent.mkdir(parents=True)
    shutil.copy(paths.eval_metrics, only_records.eval_metrics)
    for name in params.model_names:
        shutil.copytree(paths.training_log(name), only_records.training_log(name))
    only_records.card.parent.mkdir(parents=True)
    shutil.copy(paths.card, only_records.card)
    assert report(params, only_records) == paths.report.read_text()
    assert only_records.report_html.read_text() == paths.report_html.read_text()  # the same figures, byte for byte


def test_the_report_names_each_student_s_method_and_its_gain_over_its_same_budget_control(evaluated):
    _, paths, results = evaluated
    text = paths.report.read_text()
    assert ("Distilled students: student_kd (0.9 kd (temperature 8) + 0.1 kd (temperature 1), teacher live on mixed "
            "views, 1 epoch).") in text  # tiny: 1 epoch
    student, control, teacher = (results[name]["accuracy"] for name in ("student_kd", "student_baseline", "teacher"))
    gain = (student - control) * 100
    assert (f"Distillation (student_kd) against the same-budget labels-only control (student_baseline): {gain:+.2f} "
            f"points") in text
    recovered = gap_recovered(student, control, teacher)
    share = f"{recovered:.0%} of the teacher's lead" if recovered is not None else "has no lead over the control"
    assert share in text


def test_a_student_trained_longer_than_the_baseline_is_not_called_a_gain_of_distillation(evaluated):
    _, _, results = evaluated
    longer = load_params(SHIPPED_PARAMS, {**TINY_OVERRIDES, "distill.student_kd.train.epochs": 3})
    text = render_report(results, longer)
    assert "student_kd is not compared at equal budget (train.epochs: 3 against the baseline's 1): its " in text
    assert "Distillation (student_kd) against" not in text


def test_the_gap_recovered_is_the_student_s_share_of_the_teacher_s_lead_over_the_control() -> None:
    assert gap_recovered(student=0.95, control=0.90, teacher=1.00) == pytest.approx(0.5)
    assert gap_recovered(student=0.85, control=0.90, teacher=1.00) == pytest.approx(-0.5)
    assert gap_recovered(student=0.95, control=0.90, teacher=0.90) is None
