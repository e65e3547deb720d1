"""crd's memory banks on several processes: each strategy tells the term which processes share each batch (ddp
and fsdp all of them, a pipeline none: its last stage sees every row), so a pipeline of several stages trains
as one process does instead of hanging in a gather only the last stage joins; and ddp leaves the banks, which
every rank updates alike from the gathered batch, out of the buffers it broadcasts before every forward."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore

from pipelines.config.distributed import DistributedParams
from pipelines.core.paths import Paths
from pipelines.data.images import ImageSet
from pipelines.engine.checkpoint import load_checkpoint, save_checkpoint
from pipelines.engine.runtime import Runtime
from pipelines.engine.strategies import build_strategy
from pipelines.engine.strategies.ddp import DDP
from pipelines.kd.base import Context, Distillation
from pipelines.kd.ce import CE
from pipelines.kd.crd import CRD
from pipelines.kd.teacher import Teacher
from pipelines.models import ModelConfig, build_model
from tasks.params import write_overrides
from tests.conftest import PROJECT_ROOT, SHIPPED_PARAMS, TINY_OVERRIDES

RUN_TIMEOUT_S = 240  # a whole distill run here takes well under a minute: past this, it hangs
COLLECTIVE_TIMEOUT_S = 60  # distributed.timeout_s: a collective some rank never joins fails the run first
TWO_PROCESSES = Runtime(torch.device("cpu"), rank=0, world_size=2)


def cnn(width: int, depth: int) -> ModelConfig:
    return ModelConfig(arch="cnn", width=width, depth=depth, blocks_per_stage=1, dropout=0.0, in_channels=1,
                       image_size=(8, 8), num_classes=4, pixel_mean=(0.5,), pixel_std=(0.3,))


@pytest.fixture
def crd_student(tmp_path: Path) -> tuple[torch.nn.Module, Distillation, CRD, ImageSet]:
    """A cnn student with batch norm, its crd + ce objective against a random cnn teacher (run live), and 16
    random 8x8 images."""
    torch.manual_seed(0)
    paths = Paths(tmp_path)
    save_checkpoint(paths.model("teacher"), build_model(cnn(4, 2)).state_dict(), cnn(4, 2), {})
    context = Context(paths, 0.0, Teacher(paths.model("teacher"), paths.teacher_features("s")))
    crd = CRD.create(CRD.Options(feature_dim=6, negatives=5), context)
    objective = Distillation([("crd", 1.0, crd), ("ce", 1.0, CE.create(CE.Options(), context))])
    train = ImageSet(torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 4, (16,)),
                     ["a", "b", "c", "d"])
    return build_model(cnn(2, 1)), objective, crd, train


@pytest.fixture
def two_fake_processes() -> Iterator[Runtime]:
    """Rank 0 of two processes in torch's fake process group, whose collectives return at once: enough for a
    strategy's preparation, with no second process."""
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    yield TWO_PROCESSES
    dist.destroy_process_group()


@pytest.mark.parametrize(("strategy", "shared"), [("ddp", True), ("fsdp", True), ("pipeline", False)])
def test_each_strategy_tells_crd_the_processes_over_which_to_gather_a_batch(two_fake_processes, crd_student,
                                                                             strategy: str, shared: bool) -> None:
    # ddp and fsdp: each process holds a share of every batch; a pipeline: its last stage sees every row.
    model, objective, crd, train = crd_student
    crd.share_batches_over(None if shared else dist.group.WORLD)  # the opposite, to see the strategy set it
    build_strategy(two_fake_processes, DistributedParams(strategy=strategy, microbatches=2)).prepare(
        model, objective, train, 8)
    assert crd.group is (dist.group.WORLD if shared else None)


def test_one_process_gathers_nothing(crd_student) -> None:
    model, objective, crd, train = crd_student
    crd.share_batches_over(dist.group.WORLD)
    build_strategy(Runtime(torch.device("cpu")), DistributedParams()).prepare(model, objective, train, 8)
    assert crd.group is None


def test_ddp_broadcasts_batch_norm_s_statistics_but_not_crd_s_memory_banks(two_fake_processes, crd_student) -> None:
    model, objective, _, train = crd_student
    ddp = DDP(two_fake_processes, DistributedParams(strategy="ddp"))
    ddp.prepare(model, objective, train, 8)

    banks = {"objective.terms.0.student_bank", "objective.terms.0.teacher_bank"}
    assert ddp.wrapped.parameters_to_ignore == banks
    broadcast = set(ddp.wrapped.named_module_buffers)
    assert not broadcast & banks
    # The normalizers stay: each rank fixes its own from its share of the first batch, and rank 0's then holds.
    assert {"model.features.1.running_mean", "model.features.1.running_var",
            "objective.terms.0.normalizers"} <= broadcast


@pytest.mark.slow
def test_under_ddp_the_banks_stay_alike_on_every_rank_and_train_as_when_they_were_broadcast(tmp_path: Path) -> None:
    learned = {}
    for name, options in {"kept": [], "broadcast": ["--broadcast-banks"]}.items():
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                 "2", str(PROJECT_ROOT / "tests" / "crd_worker.py"), str(tmp_path / f"{name}.pt"),
                                 *options], cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        assert result.returncode == 0, result.stderr[-3000:]
        learned[name] = torch.load(tmp_path / f"{name}.pt", weights_only=True)

    assert learned["kept"]["same_banks"]  # updated alike from the gathered batch, with nothing sent
    for part in ("state_dict", "objective"):
        assert learned["kept"][part].keys() == learned["broadcast"][part].keys()
        for key, value in learned["kept"][part].items():
            assert torch.equal(value, learned["broadcast"][part][key]), key  # bit for bit


@pytest.mark.slow
def test_under_a_pipeline_of_three_stages_crd_trains_as_one_process_does(trained_pipeline, tmp_path: Path) -> None:
    # The embedding entering the classifier, which crd reads, is made on the last stage, where the loss is: under
    # three stages it gathers nothing (a gather the other stages never join hung the run before).
    _, shared = trained_pipeline
    paths = Paths(tmp_path / "root")
    shutil.copytree(shared.root, paths.root)
    params_file = paths.root / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, params_file)
    command = [sys.executable, "-m", "pipelines.distill", "--student", "student_kd", "--params", str(params_file),
               "--root", str(paths.root)]
    losses = [{"method": "crd", "weight": 0.8}, {"method": "ce"}]
    learned = {}
    # One process (a pipeline of one stage) accumulates the same 2 micro-batches the pipeline's stages see. Plain
    # SGD, whose steps scale with the gradients: crd's heads, outside the stages, must have theirs divided too.
    for name, processes in {"one": 1, "piped": 3}.items():
        write_overrides(params_file, {**TINY_OVERRIDES, "student.optimizer": {"name": "sgd", "lr": 0.05},
                                      "device": "cpu", "distributed.strategy": "pipeline",
                                      "distributed.nproc_per_node": processes, "distributed.microbatches": 2,
                                      "distributed.timeout_s": COLLECTIVE_TIMEOUT_S,
                                      "distill.student_kd.train.batch_size": 24, "distill.student_kd.losses": losses})
        # One thread in both runs, as torchrun starts each stage: how many threads share a product's sums changes
        # its rounding, which crd's exp(similarity / 0.07) magnifies over training.
        result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert result.returncode == 0, result.stderr[-3000:]
        learned[name] = {**load_checkpoint(paths.model("student_kd")).state_dict,
                         **torch.load(paths.heads("student_kd"), weights_only=True)}

    assert learned["one"].keys() == learned["piped"].keys()
    assert {"terms.0.student_bank", "terms.0.teacher_bank"} <= learned["one"].keys()
    for key, value in learned["one"].items():
        assert (value.float() - learned["piped"][key].float()).abs().max() <= 1e-5, key
