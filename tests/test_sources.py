"""Bring your own data: image folders and NumPy archives, grayscale or RGB, through prepare and one epoch."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipelines.augment import augment
from pipelines.engine.checkpoint import load_model
from pipelines.config import ParamsError, load_params
from pipelines.core.errors import DataError
from pipelines.core.paths import SPLITS, Paths
from pipelines.prepare import prepare
from pipelines.data.sources import load_source
from pipelines.distill import distill
from pipelines.evaluate import evaluate
from pipelines.report import report
from pipelines.teacher_logits import teacher_logits
from pipelines.train_student import train_student
from pipelines.train_teacher import train_teacher
from tests.conftest import PROJECT_ROOT, TINY_OVERRIDES, read_image_set, read_source, SHIPPED_PARAMS
from tests.test_torchvision_data import TEST, write_cifar10, write_mnist

MODELS = ("teacher", "student_baseline", "student_kd")  # those of the shipped params.yaml

CLASSES = ["cat", "dog", "fox"]


def write_image(path: Path, size: tuple[int, int], rgb: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (*size, 3) if rgb else size, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def encoded_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_folder(root: Path, rgb: bool, size: tuple[int, int] = (12, 10), per_class: int = 10) -> Path:
    for label, name in enumerate(CLASSES):
        for index in range(per_class):
            write_image(root / name / f"{index}.png", size, rgb, seed=label * 100 + index)
    return root


def params_for(source: str, **overrides):
    return load_params(SHIPPED_PARAMS, {**TINY_OVERRIDES, "data.source": source, **overrides})


@pytest.mark.parametrize("rgb", [False, True], ids=["gray", "rgb"])
def test_an_image_folder_gives_one_class_per_sub_folder_with_channels_from_the_images(tmp_path: Path, rgb: bool):
    root = image_folder(tmp_path / "images", rgb)
    data = read_source(params_for(f"imagefolder:{root}").data)
    assert data.class_names == CLASSES
    assert data.images.shape == (30, 3 if rgb else 1, 12, 10) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0] * 10 + [1] * 10 + [2] * 10
    first = np.array(Image.open(root / "cat" / "0.png"))
    expected = torch.from_numpy(first).permute(2, 0, 1) if rgb else torch.from_numpy(first)[None]
    assert torch.equal(data.images[0], expected)


def test_train_val_test_folders_fix_the_split(tmp_path: Path):
    root = tmp_path / "images"
    for split, count in zip(SPLITS, (6, 2, 3)):
        image_folder(root / split, rgb=True, per_class=count)
    paths = Paths(tmp_path / "project")
    prepare(params_for(f"imagefolder:{root}"), paths)
    counts = {split: len(read_image_set(paths.split(split))) for split in SPLITS}
    assert counts == {"train": 18, "val": 6, "test": 9}


@pytest.mark.parametrize(
    ("x", "expected_shape"),
    [
        (np.zeros((20, 9, 7), np.uint8), (20, 1, 9, 7)),
        (np.zeros((20, 9, 7, 3), np.uint8), (20, 3, 9, 7)),
        (np.zeros((20, 3, 9, 7), np.uint8), (20, 3, 9, 7)),
        (np.full((20, 9, 7), 0.5, np.float32), (20, 1, 9, 7)),
    ],
    ids=["NHW", "NHWC", "NCHW", "float"],
)
def test_an_npz_archive_gives_uint8_nchw_images_and_labels_as_classes(tmp_path: Path, x, expected_shape):
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=np.repeat([7, 3], 10))
    data = read_source(params_for(f"npz:{path}").data)
    assert data.images.shape == expected_shape and data.images.dtype == torch.uint8
    assert data.class_names == ["3", "7"] and data.labels.tolist() == [1] * 10 + [0] * 10
    if x.dtype == np.float32:
        assert (data.images == 128).all()


def test_resize_brings_every_image_to_the_asked_size(tmp_path: Path):
    root = image_folder(tmp_path / "images", rgb=True)
    write_image(root / "cat" / "big.png", (20, 16), rgb=True, seed=7)
    data = read_source(params_for(f"imagefolder:{root}", **{"data.resize": [8, 8]}).data)
    assert data.images.shape == (31, 3, 8, 8)


def generated_source(kind: str, folder: Path, rgb: bool, size: tuple[int, int], per_class: int = 20) -> str:
    """The same kind of small random dataset written as an image folder, an npz archive or a Parquet file."""
    if kind == "imagefolder":
        return f"imagefolder:{image_folder(folder / 'images', rgb, size, per_class)}"
    rng = np.random.default_rng(0)
    count = per_class * len(CLASSES)
    pixels = rng.integers(0, 256, (count, *size, 3) if rgb else (count, *size), dtype=np.uint8)
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "npz":
        np.savez(folder / "data.npz", x=pixels, y=labels)
        return f"npz:{folder / 'data.npz'}"
    table = pa.table({"image": [encoded_png(image) for image in pixels], "label": labels})
    pq.write_table(table, folder / "data.parquet")
    return f"parquet:{folder / 'data.parquet'}"


@pytest.mark.parametrize("kind", ["imagefolder", "npz", "parquet"])
@pytest.mark.parametrize("rgb", [False, True], ids=["gray", "rgb"])
@pytest.mark.parametrize("size", [(8, 8), (20, 16)], ids=["8x8", "20x16"])
def test_each_format_runs_through_the_whole_one_epoch_pipeline(tmp_path: Path, kind, rgb, size):
    params = params_for(generated_source(kind, tmp_path / "raw", rgb, size))
    paths = Paths(tmp_path / "project")
    card = prepare(params, paths)
    for stage in (augment, train_teacher, train_student, teacher_logits, distill):
        stage(params, paths)
    results = evaluate(params, paths)
    report(params, paths)
    assert list(card.image_shape) == [3 if rgb else 1, *size] and card.num_classes == 3
    for name in MODELS:
        _, checkpoint = load_model(paths.model(name))
        assert checkpoint.model_config.in_channels == (3 if rgb else 1)
        assert checkpoint.model_config.num_classes == 3
        assert checkpoint.metrics["epochs"] == 1
    # Class names reach the metrics and the report (npz and Parquet labels here are 0, 1, 2).
    names = CLASSES if kind == "imagefolder" else ["0", "1", "2"]
    assert list(results["student_kd"]["per_class"]) == names
    assert all(f"| {name} |" in paths.report.read_text() for name in names)


@pytest.mark.parametrize("name", ["MNIST", "CIFAR10"])
def test_a_torchvision_dataset_keeps_its_official_test_set_and_runs_one_teacher_epoch(tmp_path: Path, name):
    downloads = tmp_path / "downloads"
    if name == "MNIST":
        images, labels = write_mnist(downloads / "MNIST" / "raw", compressed=True)
    else:
        images, labels = write_cifar10(downloads / "cifar-10-batches-py")
    params = params_for(f"torchvision:{name}", **{"data.download_dir": str(downloads)})
    paths = Paths(tmp_path / "project")
    card = prepare(params, paths)
    augment(params, paths)
    train_teacher(params, paths)
    official_test = len(images) - TEST
    test = read_image_set(paths.split("test"))
    assert torch.equal(test.images, torch.from_numpy(images[official_test:]))
    assert card.splits["train"].count + card.splits["val"].count == official_test
    assert card.image_shape == tuple(images.shape[1:]) and card.num_classes == 10
    assert load_model(paths.model("teacher"))[1].model_config.in_channels == images.shape[1]


def test_train_and_test_folders_fix_the_test_split_and_val_comes_from_train(tmp_path: Path):
    root = tmp_path / "images"
    image_folder(root / "train", rgb=False, per_class=10)
    image_folder(root / "test", rgb=False, per_class=2)
    paths = Paths(tmp_path / "project")
    card = prepare(params_for(f"imagefolder:{root}"), paths)
    assert card.splits["test"].count == 6
    assert card.splits["train"].count + card.splits["val"].count == 30
    assert all(count > 0 for count in card.splits["val"].per_class.values())


@pytest.mark.parametrize("kind", ["imagefolder", "npz", "parquet"])
def test_every_batch_size_reads_the_same_images(tmp_path: Path, kind):
    params = params_for(generated_source(kind, tmp_path / "raw", rgb=True, size=(8, 8), per_class=7))
    whole = read_source(params.data, batch_size=1000)
    for batch_size in (1, 4, 20):
        part = read_source(params.data, batch_size=batch_size)
        assert torch.equal(part.images, whole.images) and torch.equal(part.labels, whole.labels)


@pytest.mark.parametrize(("layout", "dtype"), [("HWC", np.uint8), ("CHW", np.uint8), ("HW", np.float32)])
def test_a_parquet_column_of_arrow_fixed_shape_tensors_gives_its_images(tmp_path: Path, layout, dtype):
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (12, 1 if layout == "HW" else 3, 6, 5), dtype=np.uint8)
    stored = {"HWC": nchw.transpose(0, 2, 3, 1), "CHW": nchw, "HW": nchw[:, 0] / np.float32(255.0)}[layout]
    column = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(stored.astype(dtype)))
    pq.write_table(pa.table({"image": column, "label": np.arange(12) % 2}), tmp_path / "tensors.parquet")
    data = read_source(params_for(f"parquet:{tmp_path / 'tensors.parquet'}").data, batch_size=5)
    assert torch.equal(data.images, torch.from_numpy(nchw)) and data.class_names == ["0", "1"]


def test_a_compressed_npz_archive_is_streamed_like_a_plain_one(tmp_path: Path):
    pixels = np.random.default_rng(0).integers(0, 256, (25, 6, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "plain.npz", x=pixels, y=np.arange(25) % 2)
    np.savez_compressed(tmp_path / "small.npz", x=pixels, y=np.arange(25) % 2)
    plain = read_source(params_for(f"npz:{tmp_path / 'plain.npz'}").data, batch_size=4)
    compressed = read_source(params_for(f"npz:{tmp_path / 'small.npz'}").data, batch_size=4)
    assert torch.equal(plain.images, compressed.images)
    assert torch.equal(plain.images, torch.from_numpy(pixels).permute(0, 3, 1, 2))


@pytest.mark.integration
def test_a_parquet_object_on_s3_is_streamed_through_prepare(tmp_path: Path, object_store):
    local = generated_source("parquet", tmp_path / "raw", rgb=True, size=(8, 8)).removeprefix("parquet:")
    bucket = object_store.make_bucket()
    object_store.client().upload_file(local, bucket, "datasets/animals.parquet")
    paths = Paths(tmp_path / "project")
    card = prepare(params_for(f"parquet:s3://{bucket}/datasets/animals.parquet"), paths)
    assert card.class_names == ["0", "1", "2"] and list(card.image_shape) == [3, 8, 8]
    from_s3 = read_image_set(paths.split("train"))
    prepare(params_for(f"parquet:{local}"), local_paths := Paths(tmp_path / "local"))
    assert torch.equal(from_s3.images, read_image_set(local_paths.split("train")).images)


@pytest.mark.integration
def test_a_missing_s3_object_is_a_clear_error(s3_env):
    bucket = s3_env.make_bucket()
    with pytest.raises(DataError, match=rf"data\.source parquet:s3://{bucket}/missing\.parquet: cannot read it"):
        load_source(params_for(f"parquet:s3://{bucket}/missing.parquet").data)


# --- bad data: a clear error naming the file and the fix ------------------------------------------


def test_a_corrupt_image_file_is_named(tmp_path: Path):
    root = image_folder(tmp_path / "images", rgb=False)
    (root / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"broken\.png: not a readable PNG or JPEG image"):
        load_source(params_for(f"imagefolder:{root}").data)


@pytest.mark.parametrize("damage", ["zero bytes", "truncated"])
def test_a_zero_byte_or_truncated_image_file_is_named(tmp_path: Path, damage: str):
    root = image_folder(tmp_path / "images", rgb=False)
    image = root / "dog" / "3.png"
    whole = image.read_bytes()
    image.write_bytes(b"" if damage == "zero bytes" else whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"dog/3\.png: "):
        data = load_source(params_for(f"imagefolder:{root}").data)
        for _ in data.batches(7):  # a truncated file may pass its header and fail as its pixels are decoded
            pass


def test_a_class_folder_without_images_is_named(tmp_path: Path):
    root = image_folder(tmp_path / "images", rgb=False)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: class folder with no PNG or JPEG images"):
        load_source(params_for(f"imagefolder:{root}").data)


def test_mixed_image_sizes_without_resize_ask_for_data_resize(tmp_path: Path):
    root = image_folder(tmp_path / "images", rgb=True)
    write_image(root / "fox" / "odd.png", (20, 16), rgb=True, seed=1)
    with pytest.raises(DataError, match=r"images of different sizes .*set data\.resize"):
        load_source(params_for(f"imagefolder:{root}").data)


def test_a_missing_npz_array_lists_the_arrays_it_has(tmp_path: Path):
    path = tmp_path / "data.npz"
    np.savez(path, images=np.zeros((4, 8, 8), np.uint8), y=np.arange(4))
    with pytest.raises(DataError, match=r"no array x \(it has images, y\); set data\.npz_keys"):
        load_source(params_for(f"npz:{path}").data)


def test_an_unknown_source_form_lists_the_valid_forms():
    with pytest.raises(ParamsError, match=r"data\.source: .*valid forms: digits, imagefolder:<dir>, npz:<file>"):
        params_for("csv:images.csv")


@pytest.mark.integration
def test_the_prepare_command_exits_1_with_the_message_and_no_traceback(tmp_path: Path):
    root = image_folder(tmp_path / "images", rgb=False)
    (root / "dog" / "broken.png").write_bytes(b"not an image")
    params_file = tmp_path / "params.yaml"
    shipped = (SHIPPED_PARAMS).read_text()
    params_file.write_text(shipped.replace("source: digits", f"source: imagefolder:{root}"))
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.prepare", "--params", str(params_file), "--root", str(tmp_path / "out")],
        cwd=PROJECT_ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "broken.png: not a readable PNG or JPEG image" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "data").exists()


# --- Parquet ---------------------------------------------------------------------------------------


def test_a_parquet_file_of_encoded_images_and_string_labels(tmp_path: Path):
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (10, 12, 3), dtype=np.uint8) for _ in range(6)]
    path = tmp_path / "photos.parquet"
    pq.write_table(pa.table({"png": [encoded_png(p) for p in pixels], "kind": ["b", "a"] * 3}), path)
    params = params_for(f"parquet:{path}", **{"data.parquet_columns": {"image": "png", "label": "kind"}})
    data = read_source(params.data)
    assert data.images.shape == (6, 3, 10, 12) and data.class_names == ["a", "b"]
    assert data.labels.tolist() == [1, 0] * 3
    assert torch.equal(data.images[0], torch.from_numpy(pixels[0]).permute(2, 0, 1))


def test_a_parquet_file_written_by_this_pipeline_is_a_source_with_its_class_names(tmp_path: Path):
    paths = Paths(tmp_path / "first")
    prepare(params_for("digits"), paths)
    table = pq.read_table(paths.split("test"))
    names = [f"digit {index}" for index in range(10)]
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"class_names": json.dumps(names)}),
                   paths.split("test"))
    data = read_source(params_for(f"parquet:{paths.split('test')}").data)
    original = read_image_set(paths.split("test"))
    assert torch.equal(data.images, original.images)
    assert data.class_names == names and torch.equal(data.labels, original.labels)


def test_a_missing_label_column_lists_the_columns_it_has(tmp_path: Path):
    path = tmp_path / "photos.parquet"
    pq.write_table(pa.table({"image": [encoded_png(np.zeros((4, 4), np.uint8))], "target": [1]}), path)
    with pytest.raises(DataError, match=r"no column label \(it has image, target\); set data\.parquet_columns"):
        load_source(params_for(f"parquet:{path}").data)


# --- normalization ---------------------------------------------------------------------------------


def test_by_default_the_card_holds_the_training_split_s_own_statistics(tmp_path: Path):
    params = params_for(generated_source("npz", tmp_path / "raw", rgb=True, size=(8, 8)))
    paths = Paths(tmp_path / "project")
    card = prepare(params, paths)
    train = read_image_set(paths.split("train")).images.float() / 255.0
    assert card.pixel_mean == pytest.approx(train.mean(dim=(0, 2, 3)).tolist())
    assert card.pixel_std == pytest.approx(train.std(dim=(0, 2, 3)).tolist())


def test_given_normalization_reaches_the_card_and_the_model(tmp_path: Path):
    normalize = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    source = generated_source("npz", tmp_path / "raw", rgb=True, size=(8, 8))
    params = params_for(source, **{"data.normalize": normalize})
    paths = Paths(tmp_path / "project")
    card = prepare(params, paths)
    augment(params, paths)
    train_teacher(params, paths)
    assert (card.pixel_mean, card.pixel_std) == (normalize["mean"], normalize["std"])
    model, _ = load_model(paths.model("teacher"))
    assert model.mean.flatten().tolist() == pytest.approx(normalize["mean"])
    assert model.std.flatten().tolist() == pytest.approx(normalize["std"])


def test_normalization_for_another_channel_count_is_refused(tmp_path: Path):
    params = params_for(generated_source("npz", tmp_path / "raw", rgb=False, size=(8, 8)),
                        **{"data.normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}})
    with pytest.raises(DataError, match=r"data\.normalize has 3 values per statistic; the images have 1 channel"):
        prepare(params, Paths(tmp_path / "project"))


def test_a_mean_without_a_std_is_a_params_error():
    with pytest.raises(ParamsError, match=r"data\.normalize: mean and std go together"):
        params_for("digits", **{"data.normalize": {"mean": [0.5]}})
