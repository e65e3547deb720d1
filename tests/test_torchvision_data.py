"""torchvision's datasets from the files torchvision keeps, without torchvision: small files in the real formats."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import pickle
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from pipelines.data.sources import torchvision_downloads
from pipelines.core.errors import DataError
from pipelines.data.sources.base import Source
from pipelines.data.sources.torchvision import open_torchvision
from tests.conftest import PROJECT_ROOT

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN, TEST = 60, 12  # rows of the small official training and test sets written here


def read_all(source: Source, batch_size: int) -> np.ndarray:
    batches = list(source.batches(batch_size))
    assert all(batch.dtype == np.uint8 and 0 < len(batch) <= batch_size for batch in batches)
    assert all(batch.shape[1:] == source.image_shape for batch in batches)
    return np.concatenate(batches)


# --- writing the real formats ----------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file of uint8 (0x08) values, gzipped when the name ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") if path.suffix == ".gz" else path.open("wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def write_mnist(raw: Path, compressed: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The four idx files of a small MNIST in `raw`; returns the images [N, 1, 28, 28] and labels, train then test."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (TRAIN + TEST, 28, 28), dtype=np.uint8)
    # Every class in both sets, as in the real ones (a stratified split needs two images per class).
    labels = np.concatenate([rng.permutation(np.arange(count) % 10) for count in (TRAIN, TEST)]).astype(np.uint8)
    suffix = ".gz" if compressed else ""
    for part, rows in (("train", slice(0, TRAIN)), ("t10k", slice(TRAIN, None))):
        write_idx(raw / f"{part}-images-idx3-ubyte{suffix}", images[rows])
        write_idx(raw / f"{part}-labels-idx1-ubyte{suffix}", labels[rows])
    return images[:, None], labels.astype(np.int64)


def write_pickle(path: Path, entry: dict) -> None:
    """A pickle like CIFAR's own: protocol 2, numpy arrays under numpy.core.multiarray (as old numpy wrote them)."""
    data = pickle.dumps(entry, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_cifar(folder: Path, train_files: list[str], test_files: list[str], rows: list[int], labels_key: str,
                meta: tuple[str, dict], classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pickled CIFAR data files of `rows` images each, plus the meta file; returns images [N, 3, 32, 32], labels."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    all_labels = rng.permutation(np.arange(sum(rows)) % classes).tolist()  # every class, shuffled
    for file, count in zip(train_files + test_files, rows):
        pixels = rng.integers(0, 256, (count, 3 * 32 * 32), dtype=np.uint8)
        file_labels, all_labels = all_labels[:count], all_labels[count:]
        write_pickle(folder / file, {"batch_label": file, labels_key: file_labels, "data": pixels})
        images.append(pixels.reshape(count, 3, 32, 32))
        labels += file_labels
    write_pickle(folder / meta[0], meta[1])
    return np.concatenate(images), np.array(labels, np.int64)


def write_cifar10(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    train = [f"data_batch_{index}" for index in range(1, 6)]
    return write_cifar(folder, train, ["test_batch"], [TRAIN // 5] * 5 + [TEST], "labels",
                       ("batches.meta", {"label_names": CIFAR10_NAMES, "num_vis": 3072}), classes=10)


def cifar100_names() -> list[str]:
    return [f"class_{index:02d}" for index in range(100)]


def write_cifar100(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return write_cifar(folder, ["train"], ["test"], [TRAIN, TEST], "fine_labels",
                       ("meta", {"fine_label_names": cifar100_names(), "coarse_label_names": ["c"] * 20}),
                       classes=100)


def tar_gz(archive: Path, folder: Path, extra: dict[str, bytes] | None = None) -> None:
    """`folder` as a .tar.gz holding `folder.name`/..., plus `extra` members (name -> bytes)."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
        for name, data in (extra or {}).items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --- reading -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [True, False], ids=["gz", "uncompressed"])
@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
def test_mnist_style_datasets_read_from_the_torchvision_raw_folder(tmp_path: Path, name: str, compressed: bool):
    images, labels = write_mnist(tmp_path / name / "raw", compressed)
    source = open_torchvision(name, tmp_path)
    assert source.image_shape == (1, 28, 28)
    assert source.labels.dtype == np.int64 and np.array_equal(source.labels, labels)
    expected_names = [str(digit) for digit in range(10)] if name == "MNIST" else [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert source.class_names == expected_names
    assert list(source.fixed_splits) == ["test"]
    assert np.array_equal(source.fixed_splits["test"], np.arange(TRAIN, TRAIN + TEST))
    for batch_size in (7, 1, 1000):  # 7 divides neither set; 1000 holds each whole
        assert np.array_equal(read_all(source, batch_size), images)


def test_the_gz_files_and_the_uncompressed_files_torchvision_extracts_give_the_same_data(tmp_path: Path):
    write_mnist(tmp_path / "gz" / "MNIST" / "raw", compressed=True, seed=3)
    write_mnist(tmp_path / "plain" / "MNIST" / "raw", compressed=False, seed=3)
    gz, plain = open_torchvision("MNIST", tmp_path / "gz"), open_torchvision("MNIST", tmp_path / "plain")
    assert np.array_equal(gz.labels, plain.labels)
    assert np.array_equal(read_all(gz, 8), read_all(plain, 8))


def test_cifar10_reads_the_extracted_folder(tmp_path: Path):
    images, labels = write_cifar10(tmp_path / "cifar-10-batches-py")
    source = open_torchvision("CIFAR10", tmp_path)
    assert source.image_shape == (3, 32, 32) and source.class_names == CIFAR10_NAMES
    assert np.array_equal(source.labels, labels)
    assert np.array_equal(source.fixed_splits["test"], np.arange(TRAIN, TRAIN + TEST))
    for batch_size in (4, 5, 100):  # 4 divides no file; 5 ends a batch at every file but the last
        assert np.array_equal(read_all(source, batch_size), images)


def test_cifar10_extracts_the_archive_beside_it_and_nothing_outside(tmp_path: Path):
    staging = tmp_path / "staging" / "cifar-10-batches-py"
    images, labels = write_cifar10(staging)
    root = tmp_path / "root"
    root.mkdir()
    escapes = {"../escaped": b"x", f"{tmp_path}/absolute": b"x", "cifar-10-batches-py/../../escaped-too": b"x"}
    tar_gz(root / "cifar-10-python.tar.gz", staging, extra=escapes)
    source = open_torchvision("CIFAR10", root)
    assert np.array_equal(source.labels, labels) and np.array_equal(read_all(source, 7), images)
    assert sorted(path.name for path in (root / "cifar-10-batches-py").iterdir()) == sorted(
        path.name for path in staging.iterdir())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["root", "staging"]
    assert sorted(path.name for path in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_cifar100_reads_fine_labels_and_fine_label_names(tmp_path: Path):
    images, labels = write_cifar100(tmp_path / "cifar-100-python")
    source = open_torchvision("CIFAR100", tmp_path)
    assert source.class_names == cifar100_names() and np.array_equal(source.labels, labels)
    assert np.array_equal(source.fixed_splits["test"], np.arange(TRAIN, TRAIN + TEST))
    assert np.array_equal(read_all(source, 9), images)


def test_a_batch_size_below_one_is_refused(tmp_path: Path):
    write_cifar100(tmp_path / "cifar-100-python")
    with pytest.raises(ValueError, match=r"batch size must be at least 1, got 0"):
        next(open_torchvision("CIFAR100", tmp_path).batches(0))


# --- downloads ---------------------------------------------------------------------------------------


@contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving `folder`; yields its base URL."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def serve_from(monkeypatch: pytest.MonkeyPatch):
    """serve_from(name, folder, md5s): point `name`'s mirrors at an HTTP server on loopback that serves
    `folder` (after a first mirror that answers 404 for everything) and, if given, expect these md5 sums."""
    with ExitStack() as servers:
        def serve(name: str, folder: Path, md5s: dict[str, str] | None) -> None:
            empty = folder.parent / f"{folder.name}-empty"
            empty.mkdir(exist_ok=True)
            mirrors = (servers.enter_context(http_server(empty)), servers.enter_context(http_server(folder)))
            monkeypatch.setitem(torchvision_downloads.MIRRORS, name, mirrors)
            if md5s is not None:
                monkeypatch.setitem(torchvision_downloads.DOWNLOADS, name, md5s)

        yield serve


def test_missing_mnist_files_are_downloaded_from_the_first_mirror_that_has_them(tmp_path: Path, serve_from):
    images, labels = write_mnist(tmp_path / "mirror", compressed=True)
    serve_from("MNIST", tmp_path / "mirror", {f"{file}.gz": md5(tmp_path / "mirror" / f"{file}.gz")
                                                          for file in MNIST_FILES})
    source = open_torchvision("MNIST", tmp_path / "data")
    assert np.array_equal(source.labels, labels) and np.array_equal(read_all(source, 16), images)
    assert sorted(path.name for path in (tmp_path / "data" / "MNIST" / "raw").iterdir()) == sorted(
        f"{file}.gz" for file in MNIST_FILES)


def test_a_missing_cifar_archive_is_downloaded_and_extracted(tmp_path: Path, serve_from):
    images, labels = write_cifar10(tmp_path / "staging" / "cifar-10-batches-py")
    (tmp_path / "mirror").mkdir()
    archive = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    tar_gz(archive, tmp_path / "staging" / "cifar-10-batches-py")
    serve_from("CIFAR10", tmp_path / "mirror", {archive.name: md5(archive)})
    source = open_torchvision("CIFAR10", tmp_path / "data")
    assert np.array_equal(source.labels, labels) and np.array_equal(read_all(source, 10), images)
    assert (tmp_path / "data" / "cifar-10-python.tar.gz").is_file()


def test_a_download_with_the_wrong_md5_is_an_error_and_leaves_no_file(tmp_path: Path, serve_from):
    write_mnist(tmp_path / "mirror", compressed=True)
    serve_from("MNIST", tmp_path / "mirror", md5s=None)  # torchvision's md5s: these files differ
    with pytest.raises(DataError, match=r"md5 [0-9a-f]{32}, expected f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        open_torchvision("MNIST", tmp_path / "data")
    assert list((tmp_path / "data" / "MNIST" / "raw").iterdir()) == []


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(("name", "folder", "files"), [
    ("MNIST", "MNIST/raw", [f"{file}.gz" for file in MNIST_FILES]),
    ("FashionMNIST", "FashionMNIST/raw", [f"{file}.gz" for file in MNIST_FILES]),
    ("CIFAR10", "", ["cifar-10-python.tar.gz"]),
    ("CIFAR100", "", ["cifar-100-python.tar.gz"]),
])
def test_offline_without_the_files_says_what_to_get_from_where_and_where_to_put_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, folder: str, files: list[str]):
    mirror = f"http://127.0.0.1:{closed_port()}/"
    monkeypatch.setitem(torchvision_downloads.MIRRORS, name, (mirror,))
    with pytest.raises(DataError) as raised:
        open_torchvision(name, tmp_path)
    message = str(raised.value)
    assert f"in {tmp_path / folder}" in message and "data.download_dir" in message
    assert all(f"{mirror}{file}" in message for file in files)
    assert "Connection refused" in message
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []


# --- damaged files and bad names -------------------------------------------------------------------


def test_a_truncated_gz_image_file_is_named(tmp_path: Path):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw, compressed=True)
    path = raw / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    source = open_torchvision("MNIST", tmp_path)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: unreadable .*delete it to download it again"):
        read_all(source, 10)


def test_a_truncated_uncompressed_image_file_is_named(tmp_path: Path):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw, compressed=False)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: the file ends early"):
        read_all(open_torchvision("MNIST", tmp_path), 10)


def test_a_file_that_is_not_idx_is_named(tmp_path: Path):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw, compressed=False)
    (raw / "train-labels-idx1-ubyte").write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: not an idx file of uint8 labels"):
        open_torchvision("MNIST", tmp_path)


def test_a_damaged_cifar_pickle_is_named(tmp_path: Path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:1000])
    with pytest.raises(DataError, match=r"data_batch_3: not a readable CIFAR pickle file"):
        open_torchvision("CIFAR10", tmp_path)


def test_a_cifar_pickle_that_would_run_code_is_refused(tmp_path: Path):
    folder = tmp_path / "cifar-100-python"
    write_cifar100(folder)
    (folder / "meta").write_bytes(pickle.dumps(os.system, protocol=2))  # names posix.system
    with pytest.raises(DataError, match=r"meta: .*refusing to load posix\.system"):
        open_torchvision("CIFAR100", tmp_path)


def test_a_damaged_cifar_archive_is_named(tmp_path: Path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(gzip.compress(b"not a tar file" * 100)[:200])
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz: not a readable \.tar\.gz archive"):
        open_torchvision("CIFAR10", tmp_path)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_an_unknown_name_lists_the_valid_names(tmp_path: Path):
    with pytest.raises(DataError, match=r"unknown torchvision dataset 'SVHN'; valid names: MNIST, FashionMNIST, "
                                        r"CIFAR10, CIFAR100"):
        open_torchvision("SVHN", tmp_path)


@pytest.mark.integration
def test_the_module_does_not_import_torchvision():
    code = "import sys, pipelines.data.sources.torchvision; print('torchvision' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
