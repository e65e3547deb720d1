"""Bad input to prepare and damaged data files: 16-bit images keep their contrast, and NaN pixels, a single
class, a class too small to split or a file cut short stop the stage with one line naming the file and the fix,
the previous artifacts left byte for byte as they were."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.augment import augment
from pipelines.config import Params, load_params
from pipelines.core.errors import DataError
from pipelines.core.paths import Paths
from pipelines.core.stage import EXIT_BAD_DATA, exit_on_user_error
from pipelines.data.card import read_card
from pipelines.data.images import open_image_set
from pipelines.prepare import prepare
from pipelines.train_teacher import train_teacher
from tests.conftest import SHIPPED_PARAMS, TINY_OVERRIDES, read_image_set, read_source


def params_for(source: str, **overrides) -> Params:
    return load_params(SHIPPED_PARAMS, {**TINY_OVERRIDES, "data.source": source, **overrides})


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root after a good prepare and augment of the shipped digits (copy it before changing it)."""
    paths = Paths(tmp_path_factory.mktemp("good"))
    params = params_for("digits")
    prepare(params, paths)
    augment(params, paths)
    return paths.root


@pytest.fixture
def paths(good_run: Path, tmp_path: Path) -> Paths:
    """This test's own copy of the good run."""
    shutil.copytree(good_run, tmp_path / "project")
    return Paths(tmp_path / "project")


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under data/, by path, with its bytes (temporary files included: none may be left)."""
    files = sorted(path for path in (root / "data").rglob("*") if path.is_file())
    return {str(path.relative_to(root)): path.read_bytes() for path in files}


def refused(stage, params: Params, paths: Paths, capsys: pytest.CaptureFixture) -> str:
    """What a stage run as its command prints when it refuses: exit code 1 and its one line on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(stage, params, paths)
    assert exit_info.value.code == EXIT_BAD_DATA
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "Traceback" not in message
    return message


def png_16_bit_rgb(pixels: np.ndarray) -> bytes:
    """A 16-bit RGB PNG of uint16 pixels [H, W, 3] (PIL writes no 16-bit RGB), chunk by chunk as the format says."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)  # filter type 0 before each row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def encoded(pixels: np.ndarray, format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def eight_bit(values: np.ndarray) -> np.ndarray:
    return np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)


# --- 16-bit images --------------------------------------------------------------------------------


def test_16_bit_grayscale_pngs_are_scaled_to_8_bits_and_the_classes_keep_their_contrast(tmp_path: Path):
    rng = np.random.default_rng(0)
    root = tmp_path / "scans"
    written = {}
    for name, low, high in (("dark", 2000, 20000), ("bright", 40000, 65535)):
        (root / name).mkdir(parents=True)
        for index in range(10):
            pixels = rng.integers(low, high + 1, (6, 5), dtype=np.uint16)
            Image.fromarray(pixels).save(root / name / f"{index}.png")
            written[name, index] = pixels
    assert Image.open(root / "dark" / "0.png").mode == "I;16"
    paths = Paths(tmp_path / "project")
    card = prepare(params_for(f"imagefolder:{root}"), paths)
    data = read_source(params_for(f"imagefolder:{root}").data)
    assert data.class_names == ["bright", "dark"] and data.image_shape == (1, 6, 5)
    assert np.array_equal(data.images[0, 0].numpy(), eight_bit(written["bright", 0]))
    assert np.array_equal(data.images[10, 0].numpy(), eight_bit(written["dark", 0]))
    assert data.images[:10].float().mean() > 200 and data.images[10:].float().mean() < 50
    assert 0.3 < card.pixel_mean[0] < 0.7 and card.pixel_std[0] > 0.2  # not every pixel white
    assert len(read_image_set(paths.split("train")).images.unique()) > 100


def test_a_16_bit_rgb_png_keeps_its_contrast(tmp_path: Path):
    rng = np.random.default_rng(1)
    written = []
    for name in ("a", "b"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for index in range(8):
            written.append(rng.integers(0, 65536, (4, 5, 3), dtype=np.uint16))
            (tmp_path / "photos" / name / f"{index}.png").write_bytes(png_16_bit_rgb(written[-1]))
    data = read_source(params_for(f"imagefolder:{tmp_path / 'photos'}").data)
    assert data.image_shape == (3, 4, 5)
    expected = np.stack([eight_bit(pixels).transpose(2, 0, 1) for pixels in written]).astype(int)
    assert np.abs(data.images.numpy().astype(int) - expected).max() <= 1  # PIL keeps the high byte


@pytest.mark.parametrize(
    ("dtype", "format", "mode"), [(np.uint16, "PNG", "I;16"), (">u2", "TIFF", "I;16B"), (np.int32, "TIFF", "I")]
)
def test_16_bit_images_encoded_in_a_parquet_column_are_scaled_too(tmp_path: Path, dtype, format, mode):
    rng = np.random.default_rng(2)
    pixels = [rng.integers(0, 65536, (5, 4)).astype(dtype) for _ in range(6)]
    assert Image.open(io.BytesIO(encoded(pixels[0], format))).mode == mode
    pq.write_table(pa.table({"image": [encoded(p, format) for p in pixels], "label": [0, 1] * 3}),
                   tmp_path / "scans.parquet")
    data = read_source(params_for(f"parquet:{tmp_path / 'scans.parquet'}").data)
    assert data.image_shape == (1, 5, 4)
    assert all(np.array_equal(data.images[i, 0].numpy(), eight_bit(p)) for i, p in enumerate(pixels))


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.full((5, 4), 70000, np.int32), r"row 3: 32-bit integer pixels in \[70000, 70000\], outside the 16-bit "
                                           r"range 0\.\.65535: save the image as an 8- or 16-bit PNG"),
        (np.full((5, 4), 0.5, np.float32), r"row 3: 32-bit float pixels \(mode F\) have no known scale: save the "
                                           r"image as an 8- or 16-bit PNG"),
    ],
    ids=["I beyond 16 bits", "F"],
)
def test_32_bit_images_without_a_known_scale_are_refused_naming_the_row(tmp_path: Path, pixels, message):
    images = [encoded(np.zeros((5, 4), np.uint8), "PNG")] * 3 + [encoded(pixels, "TIFF")]
    pq.write_table(pa.table({"image": images, "label": [0, 1, 0, 1]}), tmp_path / "mixed.parquet")
    with pytest.raises(DataError, match=rf"mixed\.parquet {message}"):
        read_source(params_for(f"parquet:{tmp_path / 'mixed.parquet'}").data)


# --- non-finite pixels ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nan_pixels_in_an_npz_stop_prepare_mid_stream_leaving_the_previous_splits(paths: Paths, capsys, bad):
    images = np.random.default_rng(3).random((40, 6, 6), dtype=np.float32)
    images[21, 2, :3] = bad  # the third batch of 8: the first two are written before it is read
    np.savez(paths.root / "floats.npz", x=images, y=np.arange(40) % 2)
    before = snapshot(paths.root)
    params = params_for(f"npz:{paths.root / 'floats.npz'}", **{"data.batch_size": 8})
    message = refused(prepare, params, paths, capsys)
    assert "floats.npz: array x, images 16 to 23: 3 NaN or infinite pixel values;" in message
    assert "numpy.nan_to_num" in message
    assert snapshot(paths.root) == before


def test_nan_in_a_parquet_column_of_float_tensors_is_refused(tmp_path: Path):
    images = np.full((6, 4, 4), 0.5, np.float32)
    images[4, 0, 0] = np.nan
    column = pa.FixedShapeTensorArray.from_numpy_ndarray(images)
    pq.write_table(pa.table({"image": column, "label": np.arange(6) % 2}), tmp_path / "tensors.parquet")
    with pytest.raises(DataError, match=r"tensors\.parquet: 1 NaN or infinite pixel values"):
        read_source(params_for(f"parquet:{tmp_path / 'tensors.parquet'}").data)



@pytest.mark.parametrize(("pixels", "message"), [
    ([0.5, float("nan")], r"lists\.parquet: column image, rows 0 to 5: 1 NaN or infinite pixel values"),
    ([10, 300], r"lists\.parquet: column image, rows 0 to 5: integer pixels in \[10, 300\], outside 0\.\.255"),
])
def test_pixel_lists_that_a_cast_would_mangle_are_refused(tmp_path: Path, pixels: list, message: str):
    rows = [[pixels[0]] * 16 for _ in range(6)]
    rows[3][5] = pixels[1]
    table = pa.table({"image": rows, "label": np.arange(6) % 2, "shape": [[1, 4, 4]] * 6})
    pq.write_table(table, tmp_path / "lists.parquet")
    with pytest.raises(DataError, match=message):
        read_source(params_for(f"parquet:{tmp_path / 'lists.parquet'}").data)


def test_float_pixel_lists_in_0_1_are_scaled_to_8_bits(tmp_path: Path):
    table = pa.table({"image": [[0.0, 0.5, 1.0, 0.25]] * 4, "label": [0, 1, 0, 1], "shape": [[1, 2, 2]] * 4})
    pq.write_table(table, tmp_path / "floats.parquet")
    data = read_source(params_for(f"parquet:{tmp_path / 'floats.parquet'}").data)
    assert data.images[0].flatten().tolist() == [0, 128, 255, 64]


# --- classes --------------------------------------------------------------------------------------


def write_class(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for index in range(count):
        Image.fromarray(np.full((4, 4), index * 20, np.uint8)).save(folder / f"{index}.png")


def test_an_image_folder_of_one_class_is_refused_naming_the_class(paths: Paths, capsys):
    write_class(paths.root / "cats" / "cat", 12)
    before = snapshot(paths.root)
    message = refused(prepare, params_for(f"imagefolder:{paths.root / 'cats'}"), paths, capsys)
    assert f"data.source imagefolder:{paths.root / 'cats'}: images of 1 class (cat); prepare needs at least two" \
        in message
    assert snapshot(paths.root) == before


def test_an_npz_of_one_label_is_refused(tmp_path: Path):
    np.savez(tmp_path / "one.npz", x=np.zeros((10, 4, 4), np.uint8), y=np.full(10, 7))
    with pytest.raises(DataError, match=r"npz:.*one\.npz: images of 1 class \(7\); prepare needs at least two"):
        prepare(params_for(f"npz:{tmp_path / 'one.npz'}"), Paths(tmp_path / "project"))


def test_a_class_too_small_to_split_is_named_with_the_images_each_class_needs(paths: Paths, capsys):
    for name, count in (("cat", 10), ("dog", 10), ("fox", 2)):
        write_class(paths.root / "animals" / name, count)
    before = snapshot(paths.root)
    message = refused(prepare, params_for(f"imagefolder:{paths.root / 'animals'}"), paths, capsys)
    assert ("cannot split 22 images into train, val, test keeping every class in each: too few images in class "
            "'fox' (2 images): each class needs at least 7 to give every split one at data.split's shares "
            "(train 0.7, val 0.15, test 0.15)") in message
    assert "[2]" not in message
    assert snapshot(paths.root) == before


# --- files cut short ------------------------------------------------------------------------------


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_truncated_transfer_set_stops_the_next_training_stage_with_one_line(paths: Paths, capsys):
    cut_short(paths.transfer)
    with pytest.raises(DataError) as error:
        open_image_set(paths.transfer, paths.arrow_cache)
    message = refused(train_teacher, params_for("digits"), paths, capsys)
    assert message.strip() == str(error.value)
    assert f"{paths.transfer}: not a readable Parquet file of this pipeline (" in message
    assert f"`dvc checkout --force {paths.transfer}`, or rerun augment (`dvc repro augment`)" in message
    assert not paths.model("teacher").exists()


def test_a_truncated_training_split_stops_augment_and_keeps_the_transfer_set(paths: Paths, capsys):
    cut_short(paths.split("train"))
    before = snapshot(paths.root)
    message = refused(augment, params_for("digits"), paths, capsys)
    assert f"{paths.split('train')}: not a readable Parquet file of this pipeline" in message
    assert f"`dvc checkout --force {paths.split('train')}`, or rerun prepare (`dvc repro prepare`)" in message
    assert snapshot(paths.root) == before


@pytest.mark.parametrize("damage", ["cut short", "not a card"])
def test_a_damaged_dataset_card_stops_the_training_stage_with_one_line(paths: Paths, capsys, damage):
    if damage == "cut short":
        cut_short(paths.card)
    else:
        paths.card.write_text('{"source": "digits"}\n')
    with pytest.raises(DataError, match=r"card\.json: not a readable dataset card of this pipeline"):
        read_card(paths.card)
    message = refused(train_teacher, params_for("digits"), paths, capsys)
    assert f"`dvc checkout --force {paths.card}`, or rerun prepare (`dvc repro prepare`)" in message


def test_a_damaged_arrow_copy_in_the_cache_is_made_again(paths: Paths):
    expected = open_image_set(paths.split("val"), paths.arrow_cache).images[:]
    [copy] = paths.arrow_cache.glob("val-*.arrow")
    copy.write_bytes(copy.read_bytes()[:100])
    assert open_image_set(paths.split("val"), paths.arrow_cache).images[:].equal(expected)
