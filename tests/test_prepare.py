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

from tests.conftest import SHIPPED_PARAMS, checksum, read_image_set, read_source
from pipelines.config import Params, load_params
from pipelines.data.images import ImageSet, open_image_set
from pipelines.data.split import assign_splits
from pipelines.data.writer import write_images
from pipelines.core.paths import SPLITS, Paths
from pipelines.prepare import prepare

DIGITS_COUNT = 1797  # scikit-learn's digits: 1797 images of 8x8 pixels, 10 classes


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(SHIPPED_PARAMS)


@pytest.fixture(scope="module")
def prepared(params, tmp_path_factory) -> Paths:
    paths = Paths(tmp_path_factory.mktemp("prepared"))
    prepare(params, paths)
    return paths


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    return read_source(load_params(SHIPPED_PARAMS).data)


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
    rows = assign_splits(digits.labels.numpy(), digits.class_names, {}, params.data.split, params.seed)
    for name in SPLITS:
        loaded = read_image_set(prepared.split(name))
        expected = ImageSet(digits.images[rows[name]], digits.labels[rows[name]], digits.class_names)
        assert loaded.images.dtype == torch.uint8 and loaded.labels.dtype == torch.int64
        assert loaded.images.shape == (len(rows[name]), 1, 8, 8)
        assert torch.equal(loaded.images, expected.images)
        assert torch.equal(loaded.labels, expected.labels)
        assert loaded.class_names == digits.class_names


def test_parquet_round_trip_keeps_multichannel_non_square_images_exactly(tmp_path):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 4, 6), generator=generator, dtype=torch.uint8)
    original = ImageSet(images, torch.tensor([2, 0, 1, 1, 2]), ["a", "b", "c"])
    with write_images(tmp_path / "set.parquet", (3, 4, 6), original.class_names) as writer:
        writer.write(images[:2], original.labels[:2])
        writer.write(images[2:], original.labels[2:])
    loaded = read_image_set(tmp_path / "set.parquet")
    assert torch.equal(loaded.images, original.images)
    assert torch.equal(loaded.labels, original.labels)
    assert loaded.class_names == original.class_names


def test_open_image_set_maps_the_file_and_gathers_exactly_the_rows_asked_for(prepared, tmp_path):
    expected = read_image_set(prepared.split("train"))
    mapped = open_image_set(prepared.split("train"), tmp_path / "cache")
    assert len(mapped) == len(expected) and mapped.image_shape == (1, 8, 8)
    assert torch.equal(mapped.labels, expected.labels) and mapped.class_names == expected.class_names
    rows = torch.randperm(len(expected), generator=torch.Generator().manual_seed(0))[:50]
    assert torch.equal(mapped.images[rows], expected.images[rows])
    assert torch.equal(mapped.images[10:20], expected.images[10:20])
    assert [path.suffix for path in (tmp_path / "cache").glob("*.arrow")] == [".arrow"]


def test_a_rewritten_file_gets_a_fresh_arrow_copy_and_the_old_one_is_removed(tmp_path):
    path, cache = tmp_path / "set.parquet", tmp_path / "cache"
    for value in (1, 2):
        with write_images(path, (1, 2, 2), ["a"]) as writer:
            writer.write(torch.full((3, 1, 2, 2), value, dtype=torch.uint8), torch.zeros(3))
        assert torch.equal(open_image_set(path, cache).images[:], torch.full((3, 1, 2, 2), value, dtype=torch.uint8))
    assert len(list(cache.glob("*.arrow"))) == 1


def test_a_failed_write_leaves_the_previous_file_untouched(tmp_path):
    path = tmp_path / "set.parquet"
    with write_images(path, (1, 2, 2), ["a"]) as writer:
        writer.write(torch.ones((3, 1, 2, 2), dtype=torch.uint8), torch.zeros(3))
    before = file_sha256(path)
    with pytest.raises(RuntimeError):
        with write_images(path, (1, 2, 2), ["a"]) as writer:
            writer.write(torch.zeros((3, 1, 2, 2), dtype=torch.uint8), torch.zeros(3))
            raise RuntimeError("crash mid-stream")
    assert file_sha256(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["set.parquet"]


def test_prepare_streams_in_batches_without_changing_any_split_or_the_card(prepared, params, tmp_path):
    small = Paths(tmp_path)
    prepare(params.model_copy(update={"data": params.data.model_copy(update={"batch_size": 7})}), small)
    assert json.loads(small.card.read_text()) == json.loads(prepared.card.read_text())
    for name in SPLITS:
        assert (pq.read_metadata(small.split(name)).num_row_groups
                > pq.read_metadata(prepared.split(name)).num_row_groups)
        assert torch.equal(read_image_set(small.split(name)).images, read_image_set(prepared.split(name)).images)


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
        assert entry["sha256"] == checksum(part)


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
        assert card.splits[name].count == first["splits"][name]["count"]
        assert card.splits[name].sha256 != first["splits"][name]["sha256"]
    other_test = pixel_rows(read_image_set(other.split("test")))
    assert set(other_test) != set(pixel_rows(read_image_set(prepared.split("test"))))
