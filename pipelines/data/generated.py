"""Harder digit sets generated from the built-in 8x8 digits, for the methods study (pipelines/kd_study.py).

The built-in digits are too easy to tell distillation losses apart: the small student is within a few test
images of the teacher. `warped_digits` makes a set where it falls clearly behind, the way real handwriting
does: each image is a digit enlarged to `size` pixels, rotated, scaled, sheared and shifted at random, with
strokes thickened at random, fragments of other digits pasted around it (clutter) and pixel noise. The test
images are drawn from other source digits than the training images, so no test image is a warped copy of a
digit the models trained on. The set is written as an image folder with train/ and test/ split folders,
which prepare reads like any user's (it splits val off train/).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.datasets import load_digits

from pipelines.config.distill import StudyDataset

TEST_SOURCE_SHARE = 0.3  # of the 1,797 source digits, those only test images are made from
TEST_IMAGE_SHARE = 0.15  # of the generated images, the test split's


def noisy_digits(path: Path, noise: float, seed: int) -> None:
    """The built-in digits with Gaussian pixel noise of standard deviation `noise` (on [0, 1]), as npz."""
    digits = load_digits()
    clean = digits.images / 16.0
    noisy = clean + np.random.default_rng(seed).normal(0.0, noise, clean.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=_to_uint8(noisy)[:, None], y=digits.target)


def warped_digits(root: Path, spec: StudyDataset, seed: int) -> None:
    """`spec.images` warped digits of side `spec.size` in root/train/<class>/ and root/test/<class>/ (PNG)."""
    from PIL import Image

    digits = load_digits()
    sources = digits.images / 16.0
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sources))
    test_count = int(spec.images * TEST_IMAGE_SHARE)
    cut = int(len(order) * (1 - TEST_SOURCE_SHARE))
    for split, pool, count in (("train", order[:cut], spec.images - test_count), ("test", order[cut:], test_count)):
        for index in range(count):
            source = pool[rng.integers(len(pool))]
            image = warp(sources[source], sources[pool], spec, rng)
            folder = root / split / str(digits.target[source])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index:05d}.png")


def warp(digit: np.ndarray, others: np.ndarray, spec: StudyDataset, rng: np.random.Generator) -> np.ndarray:
    """One 8x8 digit (on [0, 1]) as a warped, cluttered, noisy uint8 image of side spec.size."""
    size = spec.size
    assert size is not None  # only a dataset with a size is warped
    enlarged = ndimage.zoom(digit, size * 0.75 / 8, order=1)  # the digit fills 3/4 of the side
    canvas = np.zeros((size, size))
    offset = (size - enlarged.shape[0]) // 2
    canvas[offset : offset + enlarged.shape[0], offset : offset + enlarged.shape[1]] = enlarged
    angle, zoom = np.deg2rad(rng.uniform(-30, 30)), rng.uniform(0.75, 1.2)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = rotation @ np.array([[1.0, rng.uniform(-0.3, 0.3)], [0.0, 1.0]]) / zoom  # output -> input pixels
    center, shift = np.full(2, size / 2 - 0.5), rng.uniform(-0.15, 0.15, 2) * size
    image = ndimage.affine_transform(canvas, matrix, offset=center - matrix @ (center + shift), order=1)
    if rng.random() < 1 / 3:  # thicker strokes
        image = ndimage.grey_dilation(image, size=(2, 2))
    side = size // 4
    for _ in range(spec.clutter):  # a side x side piece of another digit, somewhere
        other = ndimage.zoom(others[rng.integers(len(others))], size * 0.75 / 8, order=1)
        y, x = rng.integers(0, other.shape[0] - side, 2)
        top, left = rng.integers(0, size - side, 2)
        patch = image[top : top + side, left : left + side]
        np.maximum(patch, other[y : y + side, x : x + side], out=patch)
    return _to_uint8(image + rng.normal(0.0, spec.noise, image.shape))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
