"""The README's worked example, step by step: a folder of images -> `dvc repro` -> the distilled student
pushed to an S3 remote -> a fresh clone pulls it and classifies an image with it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.engine.checkpoint import load_model
from tests.conftest import run

CLASSES = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def photo_folder(root: Path, per_class: int = 12) -> None:
    """RGB photos of three colours, with noise and varying sizes (the example sets data.resize)."""
    rng = np.random.default_rng(0)
    for name, color in CLASSES.items():
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            size = (16 + index % 3, 14 + index % 4)
            pixels = np.clip(np.array(color) + rng.normal(0, 30, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.jpg")


@pytest.mark.slow
def test_from_a_folder_of_images_to_a_published_distilled_student(project: Path, tmp_path: Path, s3_env) -> None:
    # 1. The images go under data/raw and into DVC (not git).
    photo_folder(project / "data" / "raw" / "colors")
    run(["dvc", "add", "data/raw/colors"], project)

    # 2.-3. The pipeline, pointed at them, at one size, with a ResNet teacher.
    run(["dvc", "exp", "run", "-S", "data.source=imagefolder:data/raw/colors", "-S", "data.resize=[16,16]",
         "-S", "teacher.model.arch=resnet"], project)
    assert "| student_kd |" in (project / "reports" / "report.md").read_text()
    assert load_model(project / "models" / "teacher.pt")[1].model_config.arch == "resnet"

    # 4. Publish: an S3 remote, the pipeline's state in git, every artifact pushed.
    bucket = s3_env.make_bucket()
    run(["dvc", "remote", "add", "-d", "storage", f"s3://{bucket}/distill"], project)
    run(["dvc", "remote", "modify", "storage", "endpointurl", s3_env.endpoint_url], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "Distil the colors dataset"], project)
    run(["dvc", "push"], project)

    # 5. Anyone with the repository and the bucket gets the student, byte for byte, and uses it.
    consumer = tmp_path / "consumer"
    run(["git", "clone", "-q", str(project), str(consumer)], tmp_path)
    run(["dvc", "pull", "models/student_kd.pt"], consumer)
    published = consumer / "models" / "student_kd.pt"
    assert published.read_bytes() == (project / "models" / "student_kd.pt").read_bytes()
    student, checkpoint = load_model(published)
    assert checkpoint.model_config.in_channels == 3 and checkpoint.model_config.num_classes == 3
    image = torch.from_numpy(np.array(Image.open(project / "data" / "raw" / "colors" / "blue" / "0.jpg").resize((16, 16))))
    logits = student.eval()(image.permute(2, 0, 1)[None].float() / 255.0)
    assert logits.shape == (1, 3)

    # The images were pushed too: the clone can rebuild everything from the bucket.
    shutil.rmtree(consumer / ".dvc" / "cache", ignore_errors=True)
    run(["dvc", "pull"], consumer)
    assert len(list((consumer / "data" / "raw" / "colors" / "red").glob("*.jpg"))) == 12
    assert "Data and pipelines are up to date." in run(["dvc", "status"], consumer).stdout
