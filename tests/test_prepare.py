"""Stage `prepare` on the built-in digits: stratified, disjoint, seeded Parquet splits and a matching card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import PROJECT_ROOT
from pipelines.config import Params, load_params
from pipelines.data import ImageSet, read_image_set, stratified_split, subset, to_table, write_parquet
from pipelines.paths import SPLITS, Paths
from pipelines.prepare import prepare
from pipelines.sources import load_source

DIGITS_COUNT = 1797  # scikit-learn's digits: 1797 images of 8x8 pixels, 10 classes


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(PROJECT_ROOT / "params.yaml")


@pytest.fixture(scope="module")
def prepared(params, tmp_path_factory) -> Paths:
    paths = Paths(tmp_path_factory.mktemp("prepared"))
    prepare(params, paths)
    return paths


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    return load_source(load_params(PROJECT_ROOT / "params.yaml").data).data


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pixel_rows(data: ImageSet) -> list[bytes]:
    """Each image's pixels and label as one hashable row."""
    flat = data.images.reshape(len(data), -1).numpy()
    return [row.tobytes() + int(label).to_bytes(8, "little") for row, label in zip(flat, data.labels.tolist())]


def test_prepare_writes_three_parquet_splits_and_a_card(prepared):
    for name in SPLITS:
        assert pq.read_metadata(prepared.split(name)).num_rows > 0
    card = json.loads(prepared.card.read_text())
    assert set(card["splits"]) == set(SPLITS)


def test_split_counts_sum_to_the_whole_dataset_in_the_configured_proportions(prepared, params):
    counts = {name: len(read_image_set(prepared.split(name))) for name in SPLITS}
    assert sum(counts.values()) == DIGITS_COUNT
    for name in SPLITS:
        assert abs(counts[name] - getattr(params.data.split, name) * DIGITS_COUNT) <= 1


def test_each_split_keeps_every_class_share_of_the_whole_set(prepared, digits):
    for name in SPLITS:
        part = read_image_set(prepared.split(name))
        for label in range(len(digits.class_names)):
            whole_share = float((digits.labels == label).float().mean())
            count = int((part.labels == label).sum())
            # Within one image of the class's share of the whole set.
            assert abs(count - whole_share * len(part)) <= 1.0, (name, label, count)


def test_splits_are_disjoint_and_together_are_exactly_the_dataset(prepared, digits):
    rows = {name: pixel_rows(read_image_set(prepared.split(name))) for name in SPLITS}
    # The 1797 digits are all distinct images, so comparing pixel rows compares samples.
    assert len(set(pixel_rows(digits))) == DIGITS_COUNT
    for name in SPLITS:
        assert len(set(rows[name])) == len(rows[name])
    assert not set(rows["train"]) & set(rows["val"])
    assert not set(rows["train"]) & set(rows["test"])
    assert not set(rows["val"]) & set(rows["test"])
    assert set(rows["train"]) | set(rows["val"]) | set(rows["test"]) == set(pixel_rows(digits))


def test_parquet_schema_is_fixed_size_uint8_images_with_shape_label_and_metadata(prepared):
    for name in SPLITS:
        table = pq.read_table(prepared.split(name))
        schema = table.schema
        assert schema.field("image").type == pa.list_(pa.uint8(), 1 * 8 * 8)
        assert pa.types.is_fixed_size_list(schema.field("shape").type)
        assert set(map(tuple, table.column("shape").to_pylist())) == {(1, 8, 8)}
        assert schema.field("label").type == pa.int64()
        assert json.loads(schema.metadata[b"class_names"]) == [str(digit) for digit in range(10)]
        assert json.loads(schema.metadata[b"image_shape"]) == [1, 8, 8]


def test_read_image_set_returns_exactly_the_source_images_of_the_split(prepared, params, digits):
    rows = stratified_split(digits.labels, params.data.split, params.seed)
    for name in SPLITS:
        loaded = read_image_set(prepared.split(name))
        expected = subset(digits, rows[name])
        assert loaded.images.dtype == torch.uint8 and loaded.labels.dtype == torch.int64
        assert loaded.images.shape == (len(rows[name]), 1, 8, 8)
        assert torch.equal(loaded.images, expected.images)
        assert torch.equal(loaded.labels, expected.labels)
        assert loaded.class_names == digits.class_names


def test_parquet_round_trip_keeps_multichannel_non_square_images_exactly(tmp_path):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 4, 6), generator=generator, dtype=torch.uint8)
    original = ImageSet(images, torch.tensor([2, 0, 1, 1, 2]), ["a", "b", "c"])
    write_parquet(tmp_path / "set.parquet", to_table(original))
    loaded = read_image_set(tmp_path / "set.parquet")
    assert torch.equal(loaded.images, original.images)
    assert torch.equal(loaded.labels, original.labels)
    assert loaded.class_names == original.class_names


def test_card_counts_and_checksums_match_the_files(prepared):
    card = json.loads(prepared.card.read_text())
    assert card["source"] == "digits"
    assert card["image_shape"] == [1, 8, 8]
    assert card["num_classes"] == len(card["class_names"]) == 10
    for name in SPLITS:
        part = read_image_set(prepared.split(name))
        entry = card["splits"][name]
        assert entry["count"] == len(part)
        assert entry["per_class"] == {
            class_name: int((part.labels == index).sum()) for index, class_name in enumerate(part.class_names)
        }
        assert sum(entry["per_class"].values()) == len(part)
        assert entry["sha256"] == part.checksum()


def test_card_pixel_statistics_are_those_of_the_training_split(prepared):
    card = json.loads(prepared.card.read_text())
    pixels = read_image_set(prepared.split("train")).images.numpy().astype(np.float64) / 255.0
    assert card["pixel_mean"] == pytest.approx([pixels.mean()], rel=1e-5)
    assert card["pixel_std"] == pytest.approx([pixels.std(ddof=1)], rel=1e-5)


def test_same_seed_gives_byte_identical_files(prepared, params, tmp_path):
    again = Paths(tmp_path)
    prepare(params, again)
    for name in SPLITS:
        assert file_sha256(again.split(name)) == file_sha256(prepared.split(name))
    assert file_sha256(again.card) == file_sha256(prepared.card)


def test_different_seed_gives_a_different_split(prepared, params, tmp_path):
    other = Paths(tmp_path)
    card = prepare(params.model_copy(update={"seed": params.seed + 1}), other)
    first = json.loads(prepared.card.read_text())
    for name in SPLITS:
        assert card["splits"][name]["count"] == first["splits"][name]["count"]
        assert card["splits"][name]["sha256"] != first["splits"][name]["sha256"]
    other_test = pixel_rows(read_image_set(other.split("test")))
    assert set(other_test) != set(pixel_rows(read_image_set(prepared.split("test"))))
