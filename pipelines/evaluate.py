"""Stage `evaluate`: the teacher, the baseline student and every distilled student on the test split.

Writes metrics/eval.json ({"teacher": {...}, "student_baseline": {...}, "<student>": {...}, ...}) and one
confusion-matrix plot file per model for `dvc plots`. eval.json holds everything the `report` stage shows
(per-class scores, confusion matrices, agreement with the teacher overall and by class, sizes, CPU latency):
the report renders it without loading a model, so rewording or redrawing it never reruns these measurements.
"""

from __future__ import annotations

import logging

from pipelines.config import Params
from pipelines.core.paths import Paths
from pipelines.core.stage import run_stage

log = logging.getLogger(__name__)


def evaluate(params: Params, paths: Paths = Paths()) -> dict[str, dict]:
    """Evaluate every model on the CPU; write and return what eval.json holds."""
    import torch

    from pipelines.core.atomic import write_json
    from pipelines.data.images import open_image_set
    from pipelines.engine.checkpoint import load_model
    from pipelines.engine.inference import predict_logits
    from pipelines.evaluation.metrics import classification_metrics, latency_ms, near_zero_fraction
    from pipelines.models import count_parameters

    test = open_image_set(paths.split("test"), paths.arrow_cache)
    settings = params.evaluate
    results: dict[str, dict] = {}
    predictions = {}
    for name in params.model_names:  # the teacher first: every model's agreement is measured against it
        model, _ = load_model(paths.model(name))
        logits = predict_logits(model, test.images, torch.device("cpu"), settings.batch_size)
        predictions[name] = logits.argmax(1)
        metrics = classification_metrics(logits, test.labels, test.class_names, settings.calibration_bins)
        agrees = predictions[name] == predictions["teacher"]
        metrics["agreement_with_teacher"] = float(agrees.float().mean())
        metrics["agreement_per_class"] = {  # where it and the teacher part: by actual class (None: no test image)
            class_name: float(agrees[test.labels == index].float().mean()) if (test.labels == index).any() else None
            for index, class_name in enumerate(test.class_names)
        }
        metrics["params"] = count_parameters(model)
        metrics["near_zero_weights"] = near_zero_fraction(model, settings.near_zero_threshold)
        metrics["checkpoint_bytes"] = paths.model(name).stat().st_size
        for batch_size in settings.latency_batch_sizes:
            metrics[f"latency_ms_batch_{batch_size}"] = latency_ms(
                model, test.image_shape, batch_size, settings.latency_repeats
            )
        results[name] = metrics
        log.info("%s: accuracy %.4f, %d parameters", name, metrics["accuracy"], metrics["params"])

    for name, predicted in predictions.items():
        rows = [
            {"actual": test.class_names[actual], "predicted": test.class_names[guess]}
            for actual, guess in zip(test.labels.tolist(), predicted.tolist())
        ]
        write_json(paths.confusion_plot(name), rows)
    write_json(paths.eval_metrics, results)
    return results


if __name__ == "__main__":
    run_stage(evaluate)
