"""GPU check: the training stages on this machine's CUDA GPUs through the launcher (one process per GPU, NCCL
between them when there are several), under each speed setting side by side in one run:

    fp32           every `speed` path off: float32, eager, contiguous, pageable copies
    bf16           bf16 autocast, channels_last, pinned memory, the training set on the GPU
    bf16+compile   the same with torch.compile

    python -m benchmarks.gpu_check [--strategy ddp|fsdp|pipeline] [--epochs 3] [--copies 20]

Prepares the built-in dataset (augmented `--copies` times, ~25,000 images at 20) in a temporary folder with
the shipped params.yaml, a ResNet teacher large enough to load a GPU, then runs train_teacher,
train_student, teacher_logits and distill@student_kd as `dvc repro` does. Prints, per setting and stage,
the wall seconds, the training images per second and the peak GPU memory of rank 0 (from the stage's
dvclive log), the final validation accuracy, and each setting's speed-up over fp32. Needs the project's
requirements installed beside a CUDA build of PyTorch (`pip install -r requirements.lock`); exits 2 when no
CUDA device is visible. `--device cpu` runs the same plumbing on the CPU (every speed path is off there),
to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipelines.augment import augment
from pipelines.config import load_params
from pipelines.core.paths import Paths
from pipelines.prepare import prepare
from tasks.params import write_overrides

ROOT = Path(__file__).resolve().parents[1]
OFF = {"bf16": False, "compile": False, "channels_last": False, "pin_memory": False, "data_on_device": False}
SETTINGS = {
    "fp32": OFF,
    "bf16": {**OFF, "bf16": True, "channels_last": True, "pin_memory": True, "data_on_device": True},
    "bf16+compile": {"bf16": True, "compile": True, "channels_last": True, "pin_memory": True, "data_on_device": True},
}
STAGES = {  # stage: the model whose training log it writes (None: inference only)
    "train_teacher": "teacher", "train_student": "student_baseline", "teacher_logits": None,
    "distill": "student_kd",
}


def run_stage(stage: str, params_file: Path, root: Path) -> float:
    command = [sys.executable, "-m", f"pipelines.{stage}", "--params", str(params_file), "--root", str(root)]
    if stage == "distill":
        command += ["--student", "student_kd"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", choices=["ddp", "fsdp", "pipeline"], default="ddp")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--copies", type=int, default=20, help="augmented copies of each training image")
    parser.add_argument("--teacher-width", type=int, default=64, help="channels of the ResNet teacher's first stage")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device is visible: this check needs one (--device cpu checks the script alone)", file=sys.stderr)
        sys.exit(2)
    gpus = torch.cuda.device_count() if args.device == "cuda" else 1
    print(f"torch {torch.__version__}, {gpus} x {torch.cuda.get_device_name(0) if args.device == 'cuda' else 'CPU'}, "
          f"strategy {args.strategy}, backend {'nccl' if args.device == 'cuda' and gpus > 1 else 'none (one process)'}")
    results = []
    with tempfile.TemporaryDirectory() as folder:
        base = Paths(Path(folder) / "data")
        params_file = Path(folder) / "params.yaml"
        shutil.copy(ROOT / "params.yaml", params_file)
        write_overrides(params_file, {
            "device": args.device, "augment.copies": args.copies, "distributed.strategy": args.strategy,
            "teacher.model": {"arch": "resnet", "width": args.teacher_width, "depth": 3, "dropout": 0.2,
                              "blocks_per_stage": 2},
            "teacher.train.epochs": args.epochs, "student.train.epochs": args.epochs,
            "teacher.train.batch_size": 256, "student.train.batch_size": 256,  # a multiple of the micro-batches
        })
        params = load_params(params_file)
        prepare(params, base)
        augment(params, base)
        for setting in args.settings.split(","):
            root = Path(folder) / setting
            shutil.copytree(base.root, root)
            write_overrides(params_file, {"speed": SETTINGS[setting]})
            for stage, model in STAGES.items():
                seconds = run_stage(stage, params_file, root)
                log = json.loads((Paths(root).training_log(model) / "metrics.json").read_text()) if model else {}
                results.append((setting, stage, seconds, log))
    print("\n| setting | stage | wall s | training images/s | peak GPU memory GiB | val accuracy |\n"
          "|---|---|---|---|---|---|")
    for setting, stage, seconds, log in results:
        rate = f"{log['train_images_per_second']:.0f}" if log else "-"
        memory = f"{log['peak_gpu_memory_gib']:.2f}" if "peak_gpu_memory_gib" in log else "-"
        accuracy = f"{log['val_accuracy']:.4f}" if log else "-"
        print(f"| {setting} | {stage} | {seconds:.1f} | {rate} | {memory} | {accuracy} |")
    fp32 = {stage: log.get("train_images_per_second") for setting, stage, _, log in results if setting == "fp32"}
    for setting, stage, _, log in results:
        if setting != "fp32" and log and fp32.get(stage):
            print(f"{setting} / fp32, {stage}: {log['train_images_per_second'] / fp32[stage]:.2f}x training images/s")


if __name__ == "__main__":
    main()
