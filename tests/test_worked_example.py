"""The worked example of docs/data.md, step by step: a folder of images -> `dvc repro` -> the distilled student
pushed to an S3 remote (OpenStack Swift) -> a fresh clone pulls every artifact and classifies an image with
the student; `dvc artifacts get` fetches it by name."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipelines.engine.checkpoint import load_model
from tasks.params import write_overrides
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
@pytest.mark.swift
def test_from_a_folder_of_images_to_a_published_distilled_student(project: Path, tmp_path: Path, swift_server,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in swift_server.env.items():  # the user's credentials, in the environment
        monkeypatch.setenv(name, value)
    # 1. The images go under data/raw and into DVC (not git).
    photo_folder(project / "data" / "raw" / "colors")
    run(["dvc", "add", "data/raw/colors"], project)

    # 2.-3. The pipeline, pointed at them, at one size, with a ResNet teacher.
    run(["dvc", "exp", "run", "-S", "data.source=imagefolder:data/raw/colors", "-S", "data.resize=[16,16]",
         "-S", "teacher.model.arch=resnet"], project)
    assert "| student_kd |" in (project / "reports" / "report.md").read_text()
    assert load_model(project / "models" / "teacher.pt")[1].model_config.arch == "resnet"

    # 4. Publish: params' storage section names the remote, `make remote` makes it DVC's default (.dvc/config,
    #    committed; credentials stay in the environment), every artifact is pushed. The store is OpenStack Swift.
    bucket = swift_server.make_bucket()
    write_overrides(project / "params.yaml", {"storage.dvc_remote": f"s3://{bucket}/distill",
                                              "storage.endpoint_url": swift_server.endpoint_url})
    run(["make", "-o", ".venv/.installed", "remote", f"BIN={Path(sys.executable).parent}"], project)
    config = (project / ".dvc" / "config").read_text()
    assert f"url = s3://{bucket}/distill" in config and swift_server.secret_key not in config
    run(["dvc", "repro"], project)  # the publish stage reads the storage section (publishing stays off)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "Distil the colors dataset"], project)
    run(["dvc", "push"], project)

    # 5. Anyone with the repository and the bucket gets every artifact back, byte for byte, and uses the student.
    consumer = tmp_path / "consumer"
    run(["git", "clone", "-q", str(project), str(consumer)], tmp_path)
    run(["make", "-o", ".venv/.installed", "pull", f"BIN={Path(sys.executable).parent}"], consumer)
    locked = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    cached = {out["path"] for stage in locked.values() for out in stage.get("outs", [])
              if (project / out["path"]).is_file()}
    assert len(cached) >= 10
    for path in cached:
        assert (consumer / path).read_bytes() == (project / path).read_bytes(), path
    assert "Data and pipelines are up to date." in run(["dvc", "status"], consumer).stdout
    published = consumer / "models" / "student_kd.pt"
    student, checkpoint = load_model(published)
    assert checkpoint.model_config.in_channels == 3 and checkpoint.model_config.num_classes == 3
    image = torch.from_numpy(np.array(
        Image.open(project / "data" / "raw" / "colors" / "blue" / "0.jpg").resize((16, 16))))
    logits = student.eval()(image.permute(2, 0, 1)[None].float() / 255.0)
    assert logits.shape == (1, 3)

    # The images were pushed too; and a model is a DVC artifact: a version registered as a git tag (DVC
    # Studio's convention, `name@vX.Y.Z`) is got by name from the repository and the remote alone.
    assert len(list((consumer / "data" / "raw" / "colors" / "red").glob("*.jpg"))) == 12
    run(["git", "tag", "-a", "student-kd@v1.0.0", "-m", "Register student-kd v1.0.0"], project)
    run(["dvc", "artifacts", "get", str(project), "student-kd", "-o", str(tmp_path / "student.pt")], tmp_path)
    assert (tmp_path / "student.pt").read_bytes() == (project / "models" / "student_kd.pt").read_bytes()
