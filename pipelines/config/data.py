"""The `data` and `augment` sections: where the images come from, how they are split, and how the transfer
set is augmented. SOURCES is the one table of data sources: the schema and the error messages derive from
it, and pipelines.data.sources.READERS gives the reader that opens each of its kinds."""

from __future__ import annotations

from typing import Annotated, NamedTuple

from pydantic import Field, field_validator, model_validator

from pipelines.config.base import Fraction, Probability, Section


class SourceKind(NamedTuple):
    form: str  # how `data.source` spells it, in errors and docs


TORCHVISION_DATASETS = ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100")

# `data.source` is `<kind>` or `<kind>:<location>`.
SOURCES: dict[str, SourceKind] = {
    "digits": SourceKind("digits"),
    "imagefolder": SourceKind("imagefolder:<dir>"),
    "npz": SourceKind("npz:<file>"),
    "parquet": SourceKind("parquet:<file or s3://bucket/key>"),
    "torchvision": SourceKind(f"torchvision:<{'|'.join(TORCHVISION_DATASETS)}>"),
}


class SplitParams(Section):
    train: Fraction
    val: Fraction
    test: Fraction

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


class ParquetColumns(Section):
    image: str = "image"  # encoded PNG/JPEG bytes, Arrow fixed-shape tensors, or pixel lists (uint8) with a shape
    label: str = "label"  # integer or string labels
    shape: str = "shape"  # per-row [C, H, W] of list images (else the file's image_shape metadata)


class NpzKeys(Section):
    x: str = "x"  # images: [N, H, W], [N, H, W, C] or [N, C, H, W] with C 1 or 3; uint8, or floats in [0, 1]
    y: str = "y"  # integer labels [N]


class NormalizeParams(Section):
    """Per-channel input normalization of every model; null computes it from the training split."""

    mean: list[Annotated[float, Field(ge=0.0, le=1.0)]] | None = None  # on the [0, 1] pixel scale
    std: list[Annotated[float, Field(gt=0.0)]] | None = None

    @model_validator(mode="after")
    def _together(self) -> NormalizeParams:
        if (self.mean is None) != (self.std is None) or (self.mean and self.std is not None
                                                         and len(self.mean) != len(self.std)):
            raise ValueError("mean and std go together, one value per channel each")
        return self


class DataParams(Section):
    source: str
    split: SplitParams  # for the splits the source does not fix (split folders, an official test set)
    # images prepare reads, converts and writes at a time: bounds its memory
    batch_size: int = Field(default=1024, ge=1)
    download_dir: str = "~/.cache/distill-pipeline"  # where torchvision:<Name> finds or downloads its files
    resize: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = None  # [height, width]
    npz_keys: NpzKeys = NpzKeys()
    parquet_columns: ParquetColumns = ParquetColumns()
    normalize: NormalizeParams = NormalizeParams()

    @field_validator("source")
    @classmethod
    def _known_form(cls, source: str) -> str:
        kind, colon, location = source.partition(":")
        takes_location = ":" in SOURCES[kind].form if kind in SOURCES else None
        if takes_location is False and not colon:
            return source
        if takes_location and location and (kind != "torchvision" or location in TORCHVISION_DATASETS):
            return source
        forms = ", ".join(entry.form for entry in SOURCES.values())
        raise ValueError(f"unknown data source {source!r}; valid forms: {forms}")


class ColorJitterParams(Section):
    """Each factor is drawn per image, uniform in [1 - x, 1 + x]; 0 leaves that property alone."""

    brightness: float = Field(default=0.0, ge=0.0, lt=1.0)
    contrast: float = Field(default=0.0, ge=0.0, lt=1.0)
    saturation: float = Field(default=0.0, ge=0.0, lt=1.0)  # needs 3-channel (RGB) images


class RandomResizedCropParams(Section):
    """Crop a random region (a share `scale` of the area, width/height `ratio`) and resize it to the full image."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @model_validator(mode="after")
    def _ranges(self) -> RandomResizedCropParams:
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"scale must be [low, high] with 0 < low <= high <= 1, got {list(self.scale)}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must be [low, high] with 0 < low <= high, got {list(self.ratio)}")
        return self


class MixParams(Section):
    """Mixup and CutMix on the augmented copies: an image is blended with (mixup) or gets a box pasted from
    (cutmix) another image of its batch, and keeps both labels, weighted by each image's share of the pixels."""

    mixup_alpha: float = Field(default=0.0, ge=0.0)  # the mixing share is drawn from Beta(alpha, alpha); 0 is off
    cutmix_alpha: float = Field(default=0.0, ge=0.0)  # the share outside the pasted box, likewise; 0 is off
    probability: Probability = 1.0  # share of the augmented images that are mixed
    switch_probability: Probability = 0.5  # with both on: the chance that an image gets cutmix, else mixup

    @property
    def enabled(self) -> bool:
        return self.probability > 0.0 and (self.mixup_alpha > 0.0 or self.cutmix_alpha > 0.0)


class TransformParams(Section):
    """Augmentation of a batch of images: the `augment` stage's copies of the transfer set, and a model's fresh
    views of every image in each training step (`views` of the teacher, the student and each distilled
    student). Every default leaves the images as they are."""

    rotation_degrees: float = Field(default=0.0, ge=0.0, le=180.0)
    translate: float = Field(default=0.0, ge=0.0, le=0.5)
    scale: tuple[float, float] = (1.0, 1.0)
    pad_crop: int = Field(default=0, ge=0)  # random crop of the image padded by this many pixels (CIFAR: 4)
    noise_std: float = Field(default=0.0, ge=0.0)
    cutout_probability: Probability = 0.0
    cutout_size: int = Field(default=1, ge=1)
    horizontal_flip: bool = False
    color_jitter: ColorJitterParams = ColorJitterParams()
    random_resized_crop: RandomResizedCropParams | None = None
    mix: MixParams = MixParams()

    @model_validator(mode="after")
    def _scale_range(self) -> TransformParams:
        low, high = self.scale
        if not 0.0 < low <= high:
            raise ValueError(f"scale must be [low, high] with 0 < low <= high, got {list(self.scale)}")
        return self

    @property
    def enabled(self) -> bool:
        """Whether these settings change any image."""
        return self != TransformParams()


class AugmentParams(TransformParams):
    """The `augment` section: the fixed transfer set, `copies` augmented copies of each training image."""

    copies: int = Field(ge=0)
    include_original: bool
    batch_size: int = Field(ge=1)

    @model_validator(mode="after")
    def _not_empty(self) -> AugmentParams:
        if self.copies == 0 and not self.include_original:
            raise ValueError("copies is 0 and include_original is false: the transfer set would be empty")
        return self
