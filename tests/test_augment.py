"""Batched, seeded augmentation (`augment_batch`) and the transfer set built from it (stage `augment`)."""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import SHIPPED_PARAMS, TINY_OVERRIDES, read_image_set
from pipelines.augment import augment
from pipelines.data.transfer import transfer_batches
from pipelines.config import load_params
from pipelines.config.data import AugmentParams, MixParams
from pipelines.data.images import ImageSet
from pipelines.core.paths import Paths
from pipelines.prepare import prepare
from pipelines.data.transforms import augment_batch, mix_batch

# Every magnitude zero: augment_batch must then be the identity.
IDENTITY = {
    "rotation_degrees": 0.0,
    "translate": 0.0,
    "scale": [1.0, 1.0],
    "noise_std": 0.0,
    "cutout_probability": 0.0,
    "horizontal_flip": False,
}


@pytest.fixture(scope="module")
def shipped() -> AugmentParams:
    return load_params(SHIPPED_PARAMS).augment


def settings(base: AugmentParams, **changes: Any) -> AugmentParams:
    """Validated augment params: `base` with `changes`."""
    return AugmentParams.model_validate({**base.model_dump(), **changes})


def random_images(count: int, shape=(1, 8, 8), seed: int = 0) -> torch.Tensor:
    return torch.rand(count, *shape, generator=torch.Generator().manual_seed(seed))


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_train_set(count: int = 10) -> ImageSet:
    images = torch.randint(0, 256, (count, 1, 8, 8), generator=generator(1), dtype=torch.uint8)
    labels = torch.arange(count) % 3
    return ImageSet(images, labels, ["a", "b", "c"])


def build_transfer_set(train: ImageSet, params: AugmentParams, seed: int) -> tuple[ImageSet, dict[str, torch.Tensor]]:
    """The whole transfer set in memory, and its per-row columns."""
    batches = list(transfer_batches(train, params, seed))
    columns = {name: torch.cat([batch.columns[name] for batch in batches]) for name in batches[0].columns}
    images, labels = torch.cat([batch.images for batch in batches]), torch.cat([batch.labels for batch in batches])
    return ImageSet(images, labels, train.class_names), columns


# --- augment_batch ---------------------------------------------------------------------------------


def test_zero_magnitudes_return_the_input_unchanged(shipped):
    images = random_images(32)
    out = augment_batch(images, settings(shipped, **IDENTITY), generator(0))
    assert out.shape == images.shape
    assert torch.allclose(out, images, atol=1e-6, rtol=0)


def test_zero_magnitudes_keep_a_multichannel_non_square_image(shipped):
    images = random_images(4, shape=(3, 6, 10))
    out = augment_batch(images, settings(shipped, **IDENTITY), generator(0))
    assert torch.allclose(out, images, atol=1e-6, rtol=0)


def test_augment_batch_does_not_modify_its_input(shipped):
    images = random_images(16)
    before = images.clone()
    augment_batch(images, shipped, generator(0))
    assert torch.equal(images, before)


def test_same_generator_seed_gives_identical_output(shipped):
    images = random_images(64)
    assert torch.equal(augment_batch(images, shipped, generator(7)), augment_batch(images, shipped, generator(7)))


def test_different_generator_seed_gives_different_output(shipped):
    images = random_images(64)
    assert not torch.equal(augment_batch(images, shipped, generator(7)), augment_batch(images, shipped, generator(8)))


def test_output_keeps_the_shape_and_is_clamped_to_the_unit_range(shipped):
    images = random_images(64)
    out = augment_batch(images, settings(shipped, noise_std=0.5), generator(0))
    assert out.shape == images.shape
    assert out.dtype == images.dtype
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0  # strong noise pushes pixels past both ends


def test_cutout_erases_one_square_of_cutout_size_and_changes_nothing_else(shipped):
    size, height, width = 3, 16, 16
    images = torch.ones(200, 1, height, width)
    out = augment_batch(images, settings(shipped, **{**IDENTITY, "cutout_probability": 1.0, "cutout_size": size}),
                        generator(0))
    interior = 0
    for image in out[:, 0]:
        erased = image < 0.5
        # Outside the erased square every pixel is untouched.
        assert torch.allclose(image[~erased], torch.ones(()), atol=1e-6)
        assert torch.all(image[erased] == 0.0)
        rows = erased.any(1).nonzero().flatten()
        cols = erased.any(0).nonzero().flatten()
        assert len(rows) > 0, "probability 1 erases a square in every image"
        top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
        # The erased pixels are one filled rectangle ...
        assert int(erased.sum()) == (bottom - top + 1) * (right - left + 1)
        # ... a cutout_size square, smaller only where the border clips it.
        if 0 < top and bottom < height - 1 and 0 < left and right < width - 1:
            assert int(erased.sum()) == size * size
            interior += 1
        else:
            assert int(erased.sum()) <= size * size
    assert interior > 0


def test_cutout_probability_zero_erases_nothing(shipped):
    images = torch.ones(100, 1, 8, 8)
    out = augment_batch(images, settings(shipped, **{**IDENTITY, "cutout_size": 4}), generator(0))
    assert torch.equal(out, images)


def test_horizontal_flip_alone_mirrors_some_images_and_keeps_the_others(shipped):
    images = random_images(64)
    out = augment_batch(images, settings(shipped, **{**IDENTITY, "horizontal_flip": True}), generator(0))
    mirrored = torch.flip(images, dims=[3])
    kept = [torch.allclose(o, i, atol=1e-6, rtol=0) for o, i in zip(out, images)]
    flipped = [torch.allclose(o, m, atol=1e-6, rtol=0) for o, m in zip(out, mirrored)]
    assert all(k or f for k, f in zip(kept, flipped))
    assert any(kept) and any(flipped)


def test_one_call_on_a_batch_of_256_transforms_each_image_differently(shipped):
    one = random_images(1)
    batch = one.expand(256, -1, -1, -1).contiguous()
    out = augment_batch(batch, settings(shipped, **{**IDENTITY, "rotation_degrees": 30.0, "translate": 0.2}),
                        generator(0))
    distinct = torch.unique(out.reshape(256, -1), dim=0)
    assert len(distinct) == 256


# --- the transfer set ------------------------------------------------------------------------------


@pytest.mark.parametrize(("copies", "include_original"), [(3, True), (2, False), (0, True)])
def test_transfer_set_has_train_count_times_copies_plus_original_rows(shipped, copies, include_original):
    train = small_train_set()
    transfer, provenance = build_transfer_set(
        train, settings(shipped, copies=copies, include_original=include_original), seed=0
    )
    expected = len(train) * (copies + int(include_original))
    assert len(transfer) == len(provenance["source_index"]) == len(provenance["copy"]) == expected
    assert transfer.images.dtype == torch.uint8 and transfer.images.shape[1:] == train.images.shape[1:]
    first_copy = 0 if include_original else 1
    for copy in range(first_copy, copies + 1):
        rows = provenance["copy"] == copy
        assert torch.equal(provenance["source_index"][rows], torch.arange(len(train)))


def test_copy_zero_rows_are_the_original_images(shipped):
    train = small_train_set()
    transfer, provenance = build_transfer_set(train, settings(shipped, copies=2, include_original=True), seed=0)
    originals = provenance["copy"] == 0
    assert torch.equal(transfer.images[originals], train.images[provenance["source_index"][originals]])
    # The augmented copies are not the originals.
    augmented = ~originals
    assert not torch.equal(transfer.images[augmented], train.images[provenance["source_index"][augmented]])


def test_transfer_labels_follow_source_index(shipped):
    train = small_train_set()
    transfer, provenance = build_transfer_set(train, settings(shipped, copies=3), seed=0)
    assert torch.equal(transfer.labels, train.labels[provenance["source_index"]])
    assert transfer.class_names == train.class_names


def test_augment_stage_writes_the_transfer_set_with_provenance_columns(tmp_path):
    params = load_params(SHIPPED_PARAMS, TINY_OVERRIDES)
    paths = Paths(tmp_path)
    prepare(params, paths)
    augment(params, paths)
    train = read_image_set(paths.split("train"))
    transfer = read_image_set(paths.transfer)
    table = pq.read_table(paths.transfer)
    source_index = torch.tensor(table.column("source_index").to_numpy())
    copy = torch.tensor(table.column("copy").to_numpy())
    assert len(transfer) == len(train) * (params.augment.copies + int(params.augment.include_original))
    assert torch.equal(transfer.labels, train.labels[source_index])
    assert torch.equal(transfer.images[copy == 0], train.images[source_index[copy == 0]])


def test_augment_stage_is_deterministic(tmp_path):
    params = load_params(SHIPPED_PARAMS, TINY_OVERRIDES)
    tables = []
    for run_name in ("first", "second"):
        paths = Paths(tmp_path / run_name)
        prepare(params, paths)
        augment(params, paths)
        tables.append(pq.read_table(paths.transfer))
    assert tables[0].equals(tables[1], check_metadata=True)


# --- color jitter and random resized crop ----------------------------------------------------------


def jitter(shipped: AugmentParams, **factors: float) -> AugmentParams:
    return settings(shipped, **IDENTITY, color_jitter={"brightness": 0.0, "contrast": 0.0, "saturation": 0.0} | factors)


def test_brightness_scales_each_image_by_one_factor_within_its_range(shipped):
    images = 0.1 + 0.4 * random_images(32, shape=(3, 8, 8))  # in [0.1, 0.5]: a factor <= 1.3 never clips
    out = augment_batch(images, jitter(shipped, brightness=0.3), torch.Generator().manual_seed(0))
    ratios = (out / images).flatten(1)
    assert torch.allclose(ratios, ratios[:, :1].expand_as(ratios), atol=1e-5)
    assert ((ratios[:, 0] >= 0.7 - 1e-6) & (ratios[:, 0] <= 1.3 + 1e-6)).all()
    assert ratios[:, 0].std() > 0.01, "each image draws its own factor"


def test_contrast_keeps_each_image_s_mean_gray(shipped):
    images = 0.3 + 0.4 * random_images(16, shape=(1, 8, 8))  # in [0.3, 0.7]: contrast 0.2 never clips
    out = augment_batch(images, jitter(shipped, contrast=0.2), torch.Generator().manual_seed(0))
    assert torch.allclose(out.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=1e-5)
    assert not torch.allclose(out, images)


def test_saturation_keeps_each_pixel_s_luma_and_changes_its_color(shipped):
    images = 0.3 + 0.4 * random_images(16, shape=(3, 8, 8))
    out = augment_batch(images, jitter(shipped, saturation=0.5), torch.Generator().manual_seed(0))
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose((out * luma).sum(1), (images * luma).sum(1), atol=1e-5)
    assert not torch.allclose(out, images)


def test_saturation_on_grayscale_images_is_refused(shipped):
    with pytest.raises(ValueError, match=r"augment\.color_jitter\.saturation needs 3-channel"):
        augment_batch(random_images(4), jitter(shipped, saturation=0.2), torch.Generator().manual_seed(0))


def test_random_resized_crop_of_the_whole_image_is_the_identity(shipped):
    images = random_images(8, shape=(3, 16, 16))
    params = settings(shipped, **IDENTITY, random_resized_crop={"scale": [1.0, 1.0], "ratio": [1.0, 1.0]})
    out = augment_batch(images, params, torch.Generator().manual_seed(0))
    assert torch.allclose(out, images, atol=1e-5)


def test_random_resized_crop_of_a_quarter_of_the_area_zooms_in_two_times(shipped):
    # A horizontal ramp: after cropping half the width and resizing it back, the ramp is half as steep.
    ramp = 0.25 + 0.5 * torch.arange(16.0) / 15
    images = ramp.expand(4, 1, 16, 16).clone()
    params = settings(shipped, **IDENTITY, random_resized_crop={"scale": [0.25, 0.25], "ratio": [1.0, 1.0]})
    out = augment_batch(images, params, torch.Generator().manual_seed(0))
    middle = slice(4, 12)  # columns that sample inside the input, whatever the crop's position
    steps = out[..., middle].diff(dim=-1)
    assert torch.allclose(steps, torch.full_like(steps, 0.5 * 0.5 / 15), atol=1e-5)


# --- mixup and cutmix ------------------------------------------------------------------------------


def mix(**changes: float) -> MixParams:
    return MixParams(**changes)


def test_mixup_blends_each_image_with_the_next_one_and_keeps_both_labels_by_share():
    images, labels = random_images(16, shape=(3, 8, 8)), torch.arange(16) % 4
    out, mix_labels, weights = mix_batch(images, labels, mix(mixup_alpha=0.4), generator(0))
    partner = torch.roll(torch.arange(16), -1)
    expected = weights.view(-1, 1, 1, 1) * images + (1 - weights.view(-1, 1, 1, 1)) * images[partner]
    assert torch.allclose(out, expected, atol=1e-6)
    assert ((weights > 0) & (weights < 1)).all() and weights.std() > 0.05, "one Beta draw per image"
    assert torch.equal(mix_labels, labels[partner])


def test_cutmix_pastes_one_box_from_the_next_image_and_weights_labels_by_the_pixels_kept():
    images = torch.arange(16.0).view(16, 1, 1, 1).expand(16, 1, 12, 12).clone()  # image i is all i
    labels = torch.arange(16)
    out, mix_labels, weights = mix_batch(images, labels, mix(cutmix_alpha=1.0), generator(0))
    for index in range(16):
        own = out[index] == index
        pasted = out[index] == (index + 1) % 16
        assert (own | pasted).all(), "every pixel is the image's own or its partner's"
        assert float(own.float().mean()) == pytest.approx(float(weights[index]), abs=1e-6)
        if weights[index] < 1:  # the pasted pixels form one rectangle
            rows, cols = pasted[0].any(1).nonzero().flatten(), pasted[0].any(0).nonzero().flatten()
            assert int(pasted.sum()) == len(rows) * len(cols)
            assert mix_labels[index] == (index + 1) % 16
        else:
            assert mix_labels[index] == index


def test_with_both_on_the_switch_probability_chooses_cutmix_or_mixup_per_image():
    images = torch.arange(64.0).view(64, 1, 1, 1).expand(64, 1, 8, 8).clone()
    out, _, weights = mix_batch(images, torch.arange(64), mix(mixup_alpha=1.0, cutmix_alpha=1.0), generator(0))
    partner = torch.roll(torch.arange(64.0), -1).view(64, 1, 1, 1)
    pasted = ((out == images) | (out == partner)).flatten(1).all(1)  # cutmix: only the two images' values
    blended = torch.isclose(out, weights.view(-1, 1, 1, 1) * images + (1 - weights.view(-1, 1, 1, 1)) * partner)
    assert pasted.any() and (~pasted).any()
    assert blended.flatten(1).all(1)[~pasted].all()


def test_mix_probability_leaves_the_other_images_alone():
    images, labels = random_images(200), torch.arange(200) % 5
    out, mix_labels, weights = mix_batch(images, labels, mix(mixup_alpha=0.4, probability=0.3), generator(0))
    untouched = weights == 1.0
    assert 0.55 < float(untouched.float().mean()) < 0.85
    assert torch.equal(out[untouched], images[untouched]) and torch.equal(mix_labels[untouched], labels[untouched])


def test_the_same_seed_mixes_the_same_way():
    images, labels = random_images(32), torch.arange(32) % 3
    first = mix_batch(images, labels, mix(mixup_alpha=0.4, cutmix_alpha=1.0), generator(5))
    second = mix_batch(images, labels, mix(mixup_alpha=0.4, cutmix_alpha=1.0), generator(5))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_the_transfer_set_of_a_mixing_run_carries_mixed_labels_and_originals_stay_unmixed(tmp_path):
    params = load_params(SHIPPED_PARAMS, {**TINY_OVERRIDES, "augment.mix.cutmix_alpha": 1.0})
    paths = Paths(tmp_path)
    prepare(params, paths)
    augment(params, paths)
    transfer = read_image_set(paths.transfer)
    copy, weights = transfer.columns["copy"], transfer.columns["mix_weight"]
    assert (weights[copy == 0] == 1.0).all()
    assert torch.equal(transfer.columns["mix_label"][copy == 0], transfer.labels[copy == 0])
    assert (weights[copy > 0] < 1.0).float().mean() > 0.5


def test_without_mixing_the_transfer_set_has_no_mix_columns(tmp_path):
    params = load_params(SHIPPED_PARAMS, TINY_OVERRIDES)
    paths = Paths(tmp_path)
    prepare(params, paths)
    augment(params, paths)
    assert set(pq.read_schema(paths.transfer).names) == {"image", "shape", "label", "source_index", "copy"}
