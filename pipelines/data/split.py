"""The train/val/test split of a dataset: stratified and seeded (scikit-learn, imported by `prepare` alone)."""

from __future__ import annotations

import math

import numpy as np
from sklearn.model_selection import train_test_split

from pipelines.config.data import SplitParams
from pipelines.core.errors import DataError
from pipelines.core.paths import SPLITS


def require_two_classes(labels: np.ndarray, class_names: list[str], source: str) -> None:
    """A classifier needs images of two classes at least: one class would train and score 100%, learning nothing."""
    found = [class_names[label] for label in np.unique(labels)]
    if len(found) < 2:
        raise DataError(
            f"data.source {source}: images of {len(found)} class ({', '.join(found) or 'none'}); prepare needs "
            "at least two classes: add images of another (an image folder: one sub-folder of images per class)"
        )


def assign_splits(
    labels: np.ndarray, class_names: list[str], fixed: dict[str, np.ndarray], split: SplitParams, seed: int
) -> dict[str, np.ndarray]:
    """Sorted row indices of train/val/test: the splits in `fixed` as given, the others a seeded split of the
    remaining rows that keeps each class's share and the `split` proportions among themselves."""
    missing = [name for name in SPLITS if name not in fixed]
    taken = np.concatenate([np.asarray(rows, np.int64) for rows in fixed.values()] or [np.empty(0, np.int64)])
    remaining = np.setdiff1d(np.arange(len(labels)), taken)
    rows = dict(fixed)
    try:
        if len(missing) == 1:
            rows[missing[0]] = remaining
        elif missing:
            shares = [getattr(split, name) for name in missing]
            first, rest = train_test_split(
                remaining, train_size=shares[0] / sum(shares), stratify=labels[remaining], random_state=seed
            )
            rows[missing[0]] = first
            if len(missing) == 2:
                rows[missing[1]] = rest
            else:
                second, third = train_test_split(
                    rest, train_size=shares[1] / sum(shares[1:]), stratify=labels[rest], random_state=seed
                )
                rows[missing[1]], rows[missing[2]] = second, third
    except ValueError as error:  # scikit-learn's reason names classes by index: name them, and what they need
        raise DataError(_too_few_images(labels[remaining], class_names, missing, split, error)) from None
    return {name: np.sort(np.asarray(rows[name], np.int64)) for name in SPLITS}


def _too_few_images(
    labels: np.ndarray, class_names: list[str], missing: list[str], split: SplitParams, error: ValueError
) -> str:
    """Why `labels` cannot be split into the `missing` splits: the classes with fewer images than it takes to
    give each split one at its share (or scikit-learn's reason, where every class has that many)."""
    shares = {name: getattr(split, name) for name in missing}
    needed = max(len(missing), math.ceil(sum(shares.values()) / min(shares.values()) - 1e-9))
    counts = np.bincount(labels, minlength=len(class_names))
    small = [index for index in np.argsort(counts, kind="stable") if 0 < counts[index] < needed]
    proportions = ", ".join(f"{name} {share:g}" for name, share in shares.items())
    if small:
        found = ", ".join(f"{class_names[i]!r} ({counts[i]} image{'s' if counts[i] > 1 else ''})" for i in small)
        reason = (f"too few images in class{'es' if len(small) > 1 else ''} {found}: each class needs at least "
                  f"{needed} to give every split one at data.split's shares ({proportions})")
    else:
        reason = f"{error} (data.split: {proportions})"
    return (f"cannot split {len(labels)} images into {', '.join(missing)} keeping every class in each: {reason}. "
            "Add images to those classes, change data.split, or fix the splits with split folders")
