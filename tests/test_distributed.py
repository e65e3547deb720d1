"""Training under torchrun: two gloo processes share each batch through DDP, and only rank 0 writes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from pipelines.augment import augment
from pipelines.engine.checkpoint import load_checkpoint
from pipelines.config import Params
from pipelines.core.paths import Paths
from pipelines.prepare import prepare
from tasks.params import write_overrides
from tests.conftest import PROJECT_ROOT, TINY_OVERRIDES, run, SHIPPED_PARAMS


@pytest.mark.slow
def test_torchrun_with_two_processes_trains_and_writes_one_checkpoint(tmp_path: Path, tiny_params: Params) -> None:
    paths = Paths(tmp_path)
    prepare(tiny_params, paths)
    augment(tiny_params, paths)
    params_file = tmp_path / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, params_file)
    write_overrides(params_file, {**TINY_OVERRIDES, "device": "cpu"})

    result = run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "pipelines.train_teacher", "--params", str(params_file), "--root", str(tmp_path)],
        PROJECT_ROOT,
    )

    assert "device cpu x 2" in result.stderr
    checkpoint = load_checkpoint(paths.model("teacher"))
    assert checkpoint.metrics["epochs"] == 1
    assert 0.0 <= checkpoint.metrics["val_accuracy"] <= 1.0
    assert (paths.training_log("teacher") / "metrics.json").exists()
    leftovers = [path.name for path in tmp_path.rglob(".*tmp-*")]
    assert leftovers == [], "no temporary files left behind by either rank"
