"""The train/val/test split of a dataset: stratified and seeded (scikit-learn, imported by `prepare` alone)."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from pipelines.config.data import SplitParams
from pipelines.core.errors import DataError
from pipelines.core.paths import SPLITS


def assign_splits(
    labels: np.ndarray, fixed: dict[str, np.ndarray], split: SplitParams, seed: int
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
    except ValueError as error:  # scikit-learn's reason: a class too small, a split smaller than the classes
        raise DataError(
            f"cannot split {len(remaining)} images into {', '.join(missing)} keeping every class in each: {error}. "
            "Add images, change data.split, or fix the splits with split folders"
        ) from None
    return {name: np.sort(np.asarray(rows[name], np.int64)) for name in SPLITS}

