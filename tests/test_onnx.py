"""Each published student as an ONNX model (pipelines/registry/onnx_export.py): what ONNX Runtime computes from
model.onnx is what torch computes from model.pt, on the whole test split; the file is published and fetched
like the others, checked against its SHA-256; and a model the exporter refuses is published without it,
with the exporter's reason."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from pipelines.config import load_params
from pipelines.core.paths import Paths
from pipelines.engine.checkpoint import load_model
from pipelines.engine.inference import predict_logits
from pipelines.evaluate import evaluate
from pipelines.fetch import main as fetch_main
from pipelines.models import BUILDERS, ModelConfig
from pipelines.models.cnn import ConvNet
from pipelines.publish import publish
from pipelines.registry.manifest import EXPORTED, MANIFEST, ONNX
from pipelines.registry.onnx_export import export_onnx
from tests.conftest import SHIPPED_PARAMS, TINY_OVERRIDES, read_image_set
from tests.s3_server import S3Server

NAME = "student-kd"  # publish.students' shipped name for student_kd


class MedianPooled(ConvNet):
    """The built-in CNN pooling each channel by its median over positions instead of its mean: a robust
    pooling, which torch.export traces but torch.onnx cannot export (no ONNX function for aten.median.dim)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.pool = SpatialMedian()


class SpatialMedian(torch.nn.Module):
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.flatten(2).median(2, keepdim=True).values


class NoisyInput(ConvNet):
    """The built-in CNN adding Gaussian noise to its input at inference: exported as ONNX's own random
    numbers, which are not torch's, so ONNX Runtime's logits differ from torch's."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return super().forward(pixels + 0.05 * torch.randn_like(pixels))


@pytest.fixture(scope="module")
def evaluated(trained_pipeline, tmp_path_factory: pytest.TempPathFactory) -> Paths:
    """The session's tiny trained pipeline, evaluated (what publish reads), in a folder of this module's."""
    params, trained = trained_pipeline
    paths = Paths(tmp_path_factory.mktemp("evaluated"))
    shutil.copytree(trained.root, paths.root, dirs_exist_ok=True)
    evaluate(params, paths)
    return paths


def publish_to(server: S3Server, bucket: str, paths: Paths) -> dict:
    """Publish student_kd of `paths` to `bucket` with its exports (publish.export); its decision."""
    params = load_params(SHIPPED_PARAMS, {**TINY_OVERRIDES, "publish.enabled": True, "publish.bucket": bucket,
                                          "publish.export": True, "storage.endpoint_url": server.endpoint_url})
    return publish(params, paths)["students"]["student_kd"]


def stored(server: S3Server, bucket: str, key: str) -> bytes:
    return server.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def fetch(bucket: str, dest: Path, capsys: pytest.CaptureFixture) -> str:
    """`python -m pipelines.fetch student-kd` from a folder without params.yaml; what it printed."""
    fetch_main([NAME, "--bucket", bucket, "--prefix", "students", "--dest", str(dest)])
    return capsys.readouterr().out


@pytest.mark.parametrize("model", ["student_baseline", "student_kd"])
def test_onnx_runtime_gives_torch_s_logits_and_classes_on_the_whole_test_split(trained_pipeline, tmp_path: Path,
                                                                                model: str) -> None:
    params, paths = trained_pipeline
    network, _ = load_model(paths.model(model))
    test = read_image_set(paths.split("test"))

    assert export_onnx(network, test.images, tmp_path / ONNX, params.evaluate.batch_size) is None
    [images] = onnx.load(tmp_path / ONNX).graph.input
    assert images.type.tensor_type.shape.dim[0].dim_param == "batch"  # a free batch size
    session = onnxruntime.InferenceSession(str(tmp_path / ONNX), providers=["CPUExecutionProvider"])
    pixels = test.images.float().numpy() / np.float32(255)
    got = torch.from_numpy(session.run(["logits"], {"images": pixels})[0])  # every test image in one batch
    expected = predict_logits(network, test.images, torch.device("cpu"))
    assert got.shape == expected.shape == (len(test), len(test.class_names)) and len(test) > 100
    assert (got - expected).abs().max().item() <= 1e-4
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_an_onnx_file_that_answers_otherwise_than_torch_is_not_kept(trained_pipeline, tmp_path: Path) -> None:
    params, paths = trained_pipeline
    _, checkpoint = load_model(paths.model("student_kd"))
    torch.manual_seed(0)
    noisy = NoisyInput(checkpoint.model_config).eval()
    test = read_image_set(paths.split("test"))

    why = export_onnx(noisy, test.images, tmp_path / ONNX, params.evaluate.batch_size)
    assert why is not None and why.startswith("ONNX Runtime's logits differ from torch's by up to ")
    assert "(at most 0.0001 allowed) and " in why and f"of the {len(test)} test images get another class" in why
    assert not (tmp_path / ONNX).exists()


@pytest.mark.integration
def test_the_onnx_file_is_published_listed_with_its_sha256_and_fetched(
        s3_env: S3Server, evaluated: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    bucket = s3_env.make_bucket()
    version = publish_to(s3_env, bucket, evaluated)["version"]

    onnx_bytes = stored(s3_env, bucket, f"students/{NAME}/{version}/{ONNX}")
    manifest = json.loads(stored(s3_env, bucket, f"students/{NAME}/{version}/{MANIFEST}"))
    [entry] = [entry for entry in manifest["objects"] if entry["file"] == ONNX]
    assert entry == {"file": ONNX, "size": len(onnx_bytes), "sha256": hashlib.sha256(onnx_bytes).hexdigest()}
    assert manifest["left_out"] == {}

    printed = fetch(bucket, tmp_path / "models", capsys)
    assert f"{NAME} {version} (latest): 5 files verified" in printed and "published without" not in printed
    folder = tmp_path / "models" / NAME / version
    assert (folder / ONNX).read_bytes() == onnx_bytes
    card = (folder / "card.md").read_text()
    assert f'onnxruntime.InferenceSession("{ONNX}", providers=["CPUExecutionProvider"])' in card
    session = onnxruntime.InferenceSession(str(folder / ONNX), providers=["CPUExecutionProvider"])
    images = torch.rand(3, 1, 8, 8)
    local, _ = load_model(evaluated.model("student_kd"))
    got = torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])
    assert torch.allclose(got, local(images), atol=1e-4)


@pytest.mark.integration
def test_a_changed_onnx_file_in_the_bucket_is_refused_on_fetch(s3_env: S3Server, evaluated: Paths, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    bucket = s3_env.make_bucket()
    version = publish_to(s3_env, bucket, evaluated)["version"]
    key = f"students/{NAME}/{version}/{ONNX}"
    body = stored(s3_env, bucket, key)
    s3_env.client().put_object(Bucket=bucket, Key=key, Body=body[:-1] + bytes([body[-1] ^ 1]))  # same size

    with pytest.raises(SystemExit) as exit_code:
        fetch(bucket, tmp_path / "models", capsys)
    assert exit_code.value.code == 1
    assert f"s3://{bucket}/{key}: SHA-256" in capsys.readouterr().err
    assert not (tmp_path / "models" / NAME / version).exists()


@pytest.mark.integration
def test_a_model_the_onnx_exporter_refuses_is_published_without_it_naming_the_reason(
        s3_env: S3Server, evaluated: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(BUILDERS, "cnn", MedianPooled)  # the checkpoint's cnn loads as the median-pooled one
    monkeypatch.chdir(tmp_path)
    bucket = s3_env.make_bucket()
    with caplog.at_level(logging.WARNING, logger="pipelines.registry.bundle"):
        decision = publish_to(s3_env, bucket, evaluated)

    reason = ("torch.onnx.export refused the model: DispatchError: No ONNX function found for "
              "<OpOverload(op='aten.median', overload='dim')>")
    assert decision["action"] == "published"
    assert any(f"{NAME}: publishing it without {ONNX}: {reason}" in record.getMessage() for record in caplog.records)
    manifest = json.loads(stored(s3_env, bucket, f"students/{NAME}/{decision['version']}/{MANIFEST}"))
    assert [entry["file"] for entry in manifest["objects"]] == ["model.pt", "model_config.json", EXPORTED, "card.md"]
    assert list(manifest["left_out"]) == [ONNX] and manifest["left_out"][ONNX].startswith(reason)

    printed = fetch(bucket, tmp_path / "models", capsys)
    assert f"{NAME} {decision['version']} (latest): 4 files verified" in printed
    assert f"published without 'model.onnx': \"{reason}" in printed
    card = (tmp_path / "models" / NAME / decision["version"] / "card.md").read_text()
    assert f"- no `{ONNX}`: {reason}" in card and "onnxruntime" not in card
