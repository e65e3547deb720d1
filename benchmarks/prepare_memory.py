"""Does prepare's memory stay bounded as the dataset grows? Peak memory of `prepare` on generated datasets
of 4x, 16x and 64x its batch, streamed (data.batch_size rows at a time) and, side by side, read as one batch.

    python -m benchmarks.prepare_memory [--batch-size 1024] [--multiples 4 16 64] [--format npz|parquet]

Each run is a fresh process, so its peak resident memory (VmHWM; not ru_maxrss, which Linux carries over
from the parent across fork and exec) is prepare's alone, on top of the Python + torch baseline that the
process holds before prepare starts. It then reads the training split
back through the memory-mapped Arrow copy in shuffled training batches and reports the anonymous
memory that this adds: the pixels stay in the page cache, not in the process. Runs in a temporary folder.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

IMAGE_SHAPE = (3, 32, 32)  # CIFAR-sized RGB images: 3 KiB each
CLASSES = 10


def generate(path: Path, count: int, form: str) -> str:
    """`count` random images with balanced labels as an npz archive or a Parquet file of pixel lists."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (count, *IMAGE_SHAPE), dtype=np.uint8)
    labels = np.arange(count) % CLASSES
    if form == "npz":
        np.savez(path.with_suffix(".npz"), x=pixels, y=labels)
        return f"npz:{path.with_suffix('.npz')}"
    flat = pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), int(np.prod(IMAGE_SHAPE)))
    table = pa.table({"image": flat, "label": labels}).replace_schema_metadata({"image_shape": json.dumps(IMAGE_SHAPE)})
    pq.write_table(table, path.with_suffix(".parquet"), row_group_size=4096)
    return f"parquet:{path.with_suffix('.parquet')}"


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status: VmHWM (peak resident), RssAnon (heap, not
    file-backed pages such as a memory map)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(source: str, batch_size: int, root: Path) -> None:
    """One measured run: prepare, then one epoch of shuffled batch reads from the mapped training split."""
    import torch

    from pipelines.config import load_params
    from pipelines.data.images import open_image_set
    from pipelines.core.paths import Paths
    from pipelines.prepare import prepare

    params = load_params(Path("params.yaml"), {"data.source": source, "data.batch_size": batch_size})
    paths = Paths(root)
    baseline = status_mb("VmHWM")
    prepare(params, paths)
    peak = status_mb("VmHWM")

    train = open_image_set(paths.split("train"), paths.arrow_cache)
    gc.collect()
    pa.default_memory_pool().release_unused()  # what prepare freed should not count against the reads
    before_reads = status_mb("RssAnon")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    for start in range(0, len(train), 128):
        train.images[order[start : start + 128]]
    print(json.dumps({
        "baseline_mb": baseline, "peak_mb": peak, "train_images": len(train),
        "read_growth_mb": status_mb("RssAnon") - before_reads,
    }))


def measure(source: str, batch_size: int, root: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.prepare_memory", "--child", source, str(batch_size), str(root)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--multiples", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--format", choices=["npz", "parquet"], default="npz")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        source, batch_size, root = args.child
        child(source, int(batch_size), Path(root))
        return

    image_mb = np.prod(IMAGE_SHAPE) / 2**20
    print(f"prepare on {args.format} datasets of 3x32x32 images, batch {args.batch_size} images "
          f"({args.batch_size * image_mb:.1f} MB of pixels)\n")
    print("| images | dataset MB | streamed: peak MB (over baseline) | one batch: peak MB (over baseline) "
          "| mapped epoch of reads: anon MB added |")
    print("|---|---|---|---|---|")
    growth = {}
    for multiple in args.multiples:
        count = multiple * args.batch_size
        with tempfile.TemporaryDirectory() as tmp:
            source = generate(Path(tmp) / "data", count, args.format)
            streamed = measure(source, args.batch_size, Path(tmp) / "streamed")
            whole = measure(source, count, Path(tmp) / "whole")
        growth[multiple] = streamed["peak_mb"] - streamed["baseline_mb"]
        print(f"| {count} | {count * image_mb:.0f} "
              f"| {streamed['peak_mb']:.0f} (+{growth[multiple]:.0f}) "
              f"| {whole['peak_mb']:.0f} (+{whole['peak_mb'] - whole['baseline_mb']:.0f}) "
              f"| {streamed['read_growth_mb']:.1f} |")
    first, last = args.multiples[0], args.multiples[-1]
    print(f"\ndataset grew {last / first:.0f}x; streamed prepare's memory over baseline grew "
          f"{growth[last] / max(growth[first], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
