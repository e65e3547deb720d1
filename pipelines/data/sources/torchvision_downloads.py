"""Fetching torchvision's dataset files: where each is downloaded from, its md5 sum, a checked download
and a safe extraction of the CIFAR archives (pipelines/data/sources/torchvision.py reads what they give)."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import urllib.request
import zlib
from http.client import HTTPException
from pathlib import Path

from pipelines.core.atomic import atomic_path
from pipelines.core.errors import DataError

log = logging.getLogger(__name__)

# Where each dataset's files are downloaded from: a file's URL is a mirror followed by its name.
MIRRORS: dict[str, tuple[str, ...]] = {
    "MNIST": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "FashionMNIST": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "CIFAR10": ("https://www.cs.toronto.edu/~kriz/",),
    "CIFAR100": ("https://www.cs.toronto.edu/~kriz/",),
}

# The files each dataset downloads, with torchvision's md5 sums of them.
DOWNLOADS: dict[str, dict[str, str]] = {
    "MNIST": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "FashionMNIST": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "CIFAR10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "CIFAR100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
}

TIMEOUT_S = 15  # seconds a download waits for the network before it counts as failed


def fetch_missing(name: str, root: Path, folder: Path, files: list[str], alternative: str) -> None:
    """Download each of `files` into `folder`; if one cannot be, a DataError saying how to get the rest."""
    for index, file in enumerate(files):
        failures = []
        for url in _urls(name, file):
            try:
                _download(url, folder / file, DOWNLOADS[name][file])
                break
            except (OSError, HTTPException, ValueError) as error:  # URLError, timeouts, md5 mismatch
                failures.append(f"{url}: {error}")
        else:
            raise _missing(name, root, folder, files[index:], failures, alternative)


def _download(url: str, target: Path, md5: str) -> None:
    """`url` saved as `target`: written to a temporary file beside it, renamed once its md5 matches."""
    log.info("downloading %s to %s", url, target.parent)
    digest = hashlib.md5(usedforsecurity=False)
    request = urllib.request.Request(url, headers={"User-Agent": "distill-pipeline"})
    with atomic_path(target) as tmp:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, tmp.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise ValueError(f"md5 {digest.hexdigest()}, expected {md5} (a damaged or changed download)")


def _urls(name: str, file: str) -> list[str]:
    return [f"{mirror}{file}" for mirror in MIRRORS[name]]


def _missing(name: str, root: Path, folder: Path, files: list[str], failures: list[str], alternative: str) -> DataError:
    lines = [f"{name}: {', '.join(files)} not in {folder}, and downloading failed:"]
    lines += [f"  {failure}" for failure in failures]
    lines.append(f"Download {'them' if len(files) > 1 else 'it'} and put {'them' if len(files) > 1 else 'it'} "
                 f"in {folder} ({alternative}):")
    lines += [f"  {' or '.join(_urls(name, file))}" for file in files]
    lines.append(f"or set data.download_dir (now {root}) to a folder that already holds {name}, "
                 "such as an existing torchvision dataset root.")
    return DataError("\n".join(lines))


def extract(archive: Path, folder: Path, files: list[str]) -> None:
    """Extract `files` of the archive's `folder.name`/ into `folder`.

    Only those regular files are written, under their bare names, so a crafted archive cannot place
    anything elsewhere (no absolute paths, no `..`, no links); they go to a temporary folder first, which
    replaces `folder` only once every file is there."""
    wanted = {f"{folder.name}/{file}": file for file in files}
    log.info("extracting %s", archive)
    try:
        with atomic_path(folder) as tmp, tarfile.open(archive, "r:gz") as tar:
            tmp.mkdir()
            for member in tar:
                file = wanted.get(member.name.removeprefix("./"))
                if file is not None and member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None  # a regular file has contents
                    with source, (tmp / file).open("wb") as target:
                        shutil.copyfileobj(source, target)
            missing = [file for file in files if not (tmp / file).is_file()]
            if missing:
                raise DataError(f"{archive}: no {', '.join(missing)} under {folder.name}/ in this archive; "
                                "delete it to download it again")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"{archive}: not a readable .tar.gz archive ({error}); delete it to download it again"
        ) from None
