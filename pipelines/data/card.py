"""The dataset card (data/prepared/card.json): what `prepare` found in the data, and what the models need
from it (image shape, classes, input normalization). DatasetCard is its typed form; `read_card` and
`write_card` are the one place that turns it into JSON and back."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipelines.config.data import NormalizeParams
from pipelines.core.atomic import write_json
from pipelines.core.errors import DataError, first_line, require_input


@dataclass(frozen=True)
class SplitSummary:
    count: int
    per_class: dict[str, int]
    sha256: str  # of the split's pixels, then its labels (pipelines.data.writer.ImageWriter.checksum)


@dataclass(frozen=True)
class DatasetCard:
    source: str  # params' data.source
    class_names: list[str]
    image_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    pixel_mean: list[float]  # per channel, on the [0, 1] scale: the models normalize their input with these
    pixel_std: list[float]
    splits: dict[str, SplitSummary]

    @classmethod
    def build(
        cls,
        source: str,
        class_names: list[str],
        image_shape: tuple[int, int, int],
        split_labels: dict[str, np.ndarray],
        checksums: dict[str, str],
        mean_std: tuple[list[float], list[float]],
    ) -> DatasetCard:
        """The card of prepared splits: counts per class and split, image shape, normalization, checksums."""
        mean, std = mean_std
        splits = {
            name: SplitSummary(
                count=len(labels),
                per_class={class_name: int((labels == index).sum()) for index, class_name in enumerate(class_names)},
                sha256=checksums[name],
            )
            for name, labels in split_labels.items()
        }
        channels, height, width = image_shape
        return cls(source, class_names, (channels, height, width), len(class_names), mean, std, splits)


def write_card(path: Path, card: DatasetCard) -> None:
    data = asdict(card)
    data["image_shape"] = list(card.image_shape)
    write_json(path, data)


def read_card(path: Path) -> DatasetCard:
    """The card in `path`; a DataError naming it when it is cut short, damaged or not a card of this pipeline."""
    require_input(path)
    try:
        data = json.loads(path.read_text())
        data["image_shape"] = tuple(data["image_shape"])
        data["splits"] = {name: SplitSummary(**split) for name, split in data["splits"].items()}
        return DatasetCard(**data)
    except (ValueError, KeyError, TypeError, AttributeError) as error:  # bad JSON, a field missing or unknown
        detail = f"no {error}" if isinstance(error, KeyError) else first_line(error)
        raise DataError(
            f"{path}: not a readable dataset card of this pipeline ({detail}): it was cut short or damaged. Get the "
            f"last good one back with `dvc checkout --force {path}`, or rerun prepare (`dvc repro prepare`)"
        ) from None


class PixelStats:
    """Per-channel mean and standard deviation of uint8 images on the [0, 1] scale, from a histogram of each
    channel's values kept batch by batch: exact integers, so the result does not depend on the batching."""

    def __init__(self, channels: int):
        self.histograms = np.zeros((channels, 256), np.int64)

    def add(self, images: np.ndarray) -> None:
        for channel in range(images.shape[1]):
            self.histograms[channel] += np.bincount(images[:, channel].reshape(-1), minlength=256)

    def mean_std(self) -> tuple[list[float], list[float]]:
        means, stds = [], []
        values = np.arange(256, dtype=object)  # Python integers: the sums cannot overflow
        for histogram in self.histograms.astype(object):
            n, total, squares = histogram.sum(), (histogram * values).sum(), (histogram * values * values).sum()
            means.append(total / n / 255.0)
            # Unbiased variance from exact integers: (n * sum(x^2) - sum(x)^2) / (n (n - 1)).
            stds.append(float(np.sqrt((n * squares - total * total) / (n * max(n - 1, 1)))) / 255.0)
        return means, stds


def check_normalize(normalize: NormalizeParams, channels: int) -> None:
    """data.normalize, when given, must have one mean and std per channel of the images."""
    if normalize.mean is not None and len(normalize.mean) != channels:
        raise DataError(
            f"data.normalize has {len(normalize.mean)} values per statistic; the images have {channels} channel(s)"
        )
