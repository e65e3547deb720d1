"""Training on several processes under torchrun (gloo on the CPU): DDP, FSDP2 and pipeline parity with one
process (with the EMA, L1 and early stopping too), gradient accumulation, a run resumed on another number of
processes, the launcher the stages share (from the command line, `dvc repro` and the flow), several nodes on
loopback, and a worker that dies."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore

from pipelines.augment import augment
from pipelines.config import Params, ParamsError, load_params
from pipelines.config.distributed import DistributedParams
from pipelines.core.launch import RDZV_BACKEND, torchrun_arguments
from pipelines.core.paths import Paths
from pipelines.engine.checkpoint import load_checkpoint, load_model
from pipelines.engine.inference import predict_logits
from pipelines.engine.objective import CrossEntropy
from pipelines.engine.loop import scale_learning_rate
from pipelines.data.images import ImageSet
from pipelines.engine.capture import LiveModel
from pipelines.engine.strategies import build_strategy
from pipelines.engine.strategies.pipeline import PipelineParallel
from pipelines.engine.strategies.pipeline_stages import split_layers
from pipelines.engine.runtime import Runtime
from pipelines.models import ModelConfig, build_model
from pipelines.prepare import prepare
from tasks.params import write_overrides
from tests.conftest import PROJECT_ROOT, SHIPPED_PARAMS, TINY_OVERRIDES, local_rank_1, read_image_set, run

WORKER = PROJECT_ROOT / "tests" / "ddp_worker.py"


def worker(tmp_path: Path, name: str, processes: int, *options: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run tests/ddp_worker.py in `processes` processes, its output in tmp_path/<name>.pt."""
    launch = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    return run([*launch, str(WORKER), str(tmp_path / f"{name}.pt"), *options], tmp_path, check=check)


def trained_weights(tmp_path: Path, name: str, processes: int, grad_accum_steps: int = 1, strategy: str = "ddp",
                    model: str = "plain", regularization: str = "none", bf16: bool = False, batch: int = 16) -> dict:
    """tests/ddp_worker.py's weights (and metrics) after training in `processes` processes."""
    worker(tmp_path, name, processes, "--accum", str(grad_accum_steps), "--strategy", strategy, "--model", model,
           "--regularization", regularization, "--batch", str(batch), *(["--bf16"] if bf16 else []))
    return torch.load(tmp_path / f"{name}.pt", weights_only=True)


def max_difference(one: dict, other: dict) -> float:
    return max((one["state_dict"][key] - other["state_dict"][key]).abs().max().item() for key in one["state_dict"])


@pytest.mark.integration
def test_gradient_accumulation_of_k_micro_batches_equals_one_batch_k_times_larger(tmp_path: Path) -> None:
    whole = trained_weights(tmp_path, "whole", processes=1)
    accumulated = trained_weights(tmp_path, "accumulated", processes=1, grad_accum_steps=4)
    assert whole["steps"] == accumulated["steps"] == 32
    assert max_difference(whole, accumulated) <= 1e-6


@pytest.mark.slow
def test_two_ddp_processes_with_half_the_batch_each_train_the_weights_of_one_process(tmp_path: Path) -> None:
    one = trained_weights(tmp_path, "one", processes=1)
    two = trained_weights(tmp_path, "two", processes=2)
    two_accumulating = trained_weights(tmp_path, "two_accumulating", processes=2, grad_accum_steps=2)
    assert one["steps"] == two["steps"] == 32  # at least 20 optimizer steps
    assert max_difference(one, two) <= 1e-5
    assert max_difference(one, two_accumulating) <= 1e-5


@pytest.mark.slow
def test_processes_given_unequal_shares_of_each_batch_train_the_weights_of_one_process(tmp_path: Path) -> None:
    # 15 rows a step: 8 and 7 on two processes (in micro-batches of 4 and 4, 4 and 3), the epoch's last 2
    # rows one each; 16 rows on three processes: 6, 5 and 5.
    one = trained_weights(tmp_path, "one", processes=1, batch=15)
    two = trained_weights(tmp_path, "two", processes=2, batch=15, grad_accum_steps=2)
    assert one["steps"] == two["steps"] == 35
    assert max_difference(one, two) <= 1e-5
    whole = trained_weights(tmp_path, "whole", processes=1)
    three = trained_weights(tmp_path, "three", processes=3, strategy="fsdp")
    assert max_difference(whole, three) <= 1e-5
    # Each process validates its share of the split (170, 171 and 171 rows): the figures are the whole split's
    # (an accuracy within one row's prediction, the weights being 1e-7 apart).
    assert three["metrics"]["val_loss"] == pytest.approx(whole["metrics"]["val_loss"], rel=1e-5)
    assert three["metrics"]["val_accuracy"] == pytest.approx(whole["metrics"]["val_accuracy"], abs=1 / 512)


@pytest.mark.slow
def test_two_fsdp_processes_sharding_the_model_train_the_weights_of_one_process(tmp_path: Path) -> None:
    one = trained_weights(tmp_path, "one", processes=1)
    sharded = trained_weights(tmp_path, "sharded", processes=2, strategy="fsdp")
    sharded_accumulating = trained_weights(tmp_path, "sharded_accumulating", processes=2, grad_accum_steps=2,
                                           strategy="fsdp")
    assert sharded["steps"] == 32
    assert set(sharded["state_dict"]) == set(one["state_dict"])  # the full state dict, under the model's own names
    assert max_difference(one, sharded) <= 1e-5
    assert max_difference(one, sharded_accumulating) <= 1e-5


@pytest.mark.slow
def test_four_hsdp_processes_holding_two_copies_sharded_in_halves_train_the_weights_of_one_process(
    tmp_path: Path
) -> None:
    one = trained_weights(tmp_path, "one", processes=1)
    hybrid = trained_weights(tmp_path, "hybrid", processes=4, strategy="hsdp")  # fsdp_replicas: 2
    assert hybrid["steps"] == 32
    assert set(hybrid["state_dict"]) == set(one["state_dict"])
    assert max_difference(one, hybrid) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_a_two_stage_pipeline_trains_the_weights_of_one_process_accumulating_the_same_micro_batches(
    tmp_path: Path, schedule: str
) -> None:
    # The built-in cnn, with batch norm: each micro-batch is normalized on its own on both sides.
    one = trained_weights(tmp_path, "one", processes=1, grad_accum_steps=4, model="cnn")
    piped = trained_weights(tmp_path, "piped", processes=2, strategy=f"pipeline-{schedule}", model="cnn")
    assert one["steps"] == piped["steps"] == 32
    assert set(piped["state_dict"]) == set(one["state_dict"])  # the whole model, reassembled from both stages
    assert max_difference(one, piped) <= 1e-5


@pytest.mark.slow
def test_with_bf16_fsdp_gathers_the_weights_in_bf16_but_batch_norm_s_and_steps_fp32_shards(tmp_path: Path) -> None:
    # bf16 applies on CUDA only; tests/ddp_worker.py --bf16 turns it on on the CPU to run the same code.
    autocast = trained_weights(tmp_path, "autocast", processes=1, bf16=True)
    sharded = trained_weights(tmp_path, "sharded", processes=2, strategy="fsdp", bf16=True)
    normalized = trained_weights(tmp_path, "normalized", processes=2, strategy="fsdp", model="cnn", bf16=True)
    # What each layer's forward sees: autocast alone casts per op, FSDP2's policy gathers bf16 weights.
    assert autocast["forward_dtypes"] == {"Conv2d": ["float32"], "Linear": ["float32"]}
    assert sharded["forward_dtypes"] == {"Conv2d": ["bfloat16"], "Linear": ["bfloat16"]}
    assert normalized["forward_dtypes"] == {"Conv2d": ["bfloat16"], "BatchNorm2d": ["float32"], "Linear": ["bfloat16"]}
    # The optimizer stepped fp32 shards, and the run trained as one process's bf16 autocast does, to within
    # bf16's rounding (bf16 autocast against fp32 in one process differs by 6e-3).
    assert {tensor.dtype for tensor in sharded["state_dict"].values()} == {torch.float32}
    assert max_difference(autocast, sharded) <= 2e-2


@pytest.mark.slow
def test_fsdp_shards_train_the_ema_l1_and_early_stopping_of_one_process(tmp_path: Path) -> None:
    # The EMA, the L1 gradient and early stopping's best weights work on each process's shards.
    one = trained_weights(tmp_path, "one", processes=1, regularization="all")
    sharded = trained_weights(tmp_path, "sharded", processes=2, strategy="fsdp", regularization="all")
    stopped = [(run["metrics"]["epochs"], run["metrics"]["best_epoch"]) for run in (one, sharded)]
    assert stopped == [(2, 1), (2, 1)]  # stopped after epoch 2, epoch 1's weights put back
    assert max_difference(one, sharded) <= 1e-5


@pytest.mark.slow
def test_pipeline_stages_train_the_ema_l1_and_early_stopping_of_one_process(tmp_path: Path) -> None:
    # ... and on each stage's layers.
    one = trained_weights(tmp_path, "one", processes=1, grad_accum_steps=4, model="cnn", regularization="all")
    piped = trained_weights(tmp_path, "piped", processes=2, strategy="pipeline", model="cnn", regularization="all")
    stopped = [(run["metrics"]["epochs"], run["metrics"]["best_epoch"]) for run in (one, piped)]
    assert stopped == [(3, 2), (3, 2)]  # epoch 3 was worse: epoch 2's weights put back
    assert set(piped["state_dict"]) == set(one["state_dict"])
    assert max_difference(one, piped) <= 1e-5


PLAIN, CNN = ("--model", "plain"), ("--model", "cnn")  # the cnn's baseline accumulates a pipeline's micro-batches


@pytest.mark.slow
@pytest.mark.parametrize(("killed", "resumed", "model"), [
    ((2, "--strategy", "fsdp"), (1,), PLAIN),
    ((1,), (2, "--strategy", "fsdp"), PLAIN),
    ((4, "--strategy", "hsdp"), (2, "--strategy", "fsdp"), PLAIN),  # two copies of the model, then one
    ((3, "--strategy", "pipeline-1f1b"), (2, "--strategy", "pipeline"), CNN),  # the layers split anew
    ((1, "--accum", "4"), (2, "--strategy", "pipeline"), CNN),
    ((2, "--strategy", "pipeline"), (1, "--strategy", "pipeline"), CNN),  # one stage of every layer
], ids=["2-fsdp-then-1", "1-then-2-fsdp", "4-hsdp-then-2-fsdp", "3-stage-pipeline-then-2", "1-then-2-stage-pipeline",
        "2-stage-pipeline-then-1"])
def test_a_run_killed_mid_epoch_resumes_on_another_number_of_processes_to_the_weights_of_an_uninterrupted_run(
    tmp_path: Path, killed: tuple, resumed: tuple, model: tuple[str, str]
) -> None:
    uninterrupted = trained_weights(tmp_path, "uninterrupted", processes=1, model=model[1],
                                    grad_accum_steps=4 if model == CNN else 1)
    saves = tmp_path / "saves"
    died = worker(tmp_path, "killed", killed[0], *killed[1:], *model, "--resume", str(saves),
                  "--kill-after-step", "14", check=False)
    assert died.returncode != 0 and not (tmp_path / "killed.pt").exists()
    assert sorted(path.name for path in saves.glob("step-*")) == ["step-00000007", "step-00000014"]

    result = worker(tmp_path, "resumed", resumed[0], *resumed[1:], *model, "--resume", str(saves))

    assert f"resuming from {saves / 'step-00000014'} (step 14, epoch 1)" in result.stderr
    assert re.search(rf"the save was made by {killed[0]} process(es)?, this run has {resumed[0]}", result.stderr)
    finished = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert finished["steps"] == 32
    assert max_difference(finished, uninterrupted) <= 1e-5
    # The epoch's loss: its first 14 steps' sums came from the save, whatever process made them.
    assert finished["metrics"]["train_loss"] == pytest.approx(uninterrupted["metrics"]["train_loss"], rel=1e-5)


@pytest.mark.parametrize("scaling, factor", [("none", 1.0), ("linear", 4.0), ("sqrt", 2.0)])
def test_lr_scaling_multiplies_every_group_s_learning_rate_by_the_processes_or_their_root(scaling: str,
                                                                                          factor: float) -> None:
    weights, biases = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([{"params": [weights]}, {"params": [biases], "lr": 0.5}], lr=0.1)
    scale_learning_rate(optimizer, scaling, world_size=4)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.1 * factor, 0.5 * factor])


TWO_PROCESSES = Runtime(torch.device("cpu"), rank=0, world_size=2)  # what is refused is refused before any collective
EIGHT_IMAGES = ImageSet(torch.zeros(8, 1, 8, 8, dtype=torch.uint8), torch.arange(8) % 4, ["a", "b", "c", "d"])


@pytest.mark.parametrize("settings, message", [
    ({"strategy": "none"}, "distributed.strategy none runs one process, yet 2 were started"),
    ({"sync_batchnorm": True}, "distributed.sync_batchnorm: torch's SyncBatchNorm runs on GPUs only, and these "
                               "processes run on cpu"),
    ({"strategy": "fsdp", "fsdp_replicas": 3}, "distributed.fsdp_replicas: 3 copies of the model cannot be spread "
                                               "evenly over 2 processes"),
])
def test_what_the_processes_cannot_run_is_named(settings: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=re.escape(message)):
        build_strategy(TWO_PROCESSES, DistributedParams(**settings))


@pytest.mark.parametrize("model, settings, message", [
    (torch.nn.Linear(2, 2), {}, "a Linear cannot be split into layers (the built-in cnn and resnet can)"),
    (None, {"grad_accum_steps": 2}, "distributed.grad_accum_steps: under strategy pipeline"),
    (None, {"pipeline_schedule": "1f1b", "microbatches": 1}, "1f1b needs at least one micro-batch per stage"),
])
def test_the_pipeline_names_what_it_cannot_split_or_schedule(model, settings: dict, message: str) -> None:
    model = model or build_model(ModelConfig(arch="cnn", width=4, depth=1, blocks_per_stage=1, dropout=0.0,
                                             in_channels=1, image_size=(8, 8), num_classes=4, pixel_mean=(0.5,),
                                             pixel_std=(0.3,)))
    settings = {"strategy": "pipeline", **settings}
    with pytest.raises(ParamsError, match=re.escape(message)):
        build_strategy(TWO_PROCESSES, DistributedParams(**settings)).prepare(model, CrossEntropy(), EIGHT_IMAGES, 4)


@pytest.fixture
def two_fake_processes() -> Iterator[Runtime]:
    """Rank 0 of two processes in torch's fake process group, whose collectives return at once: enough for a
    strategy's preparation (a pipeline's stage asks the group its rank), with no second process."""
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    yield TWO_PROCESSES
    dist.destroy_process_group()


def test_lr_scaling_counts_the_processes_sharing_out_each_batch_which_a_pipeline_s_stages_do_not(
        two_fake_processes: Runtime) -> None:
    model = build_model(ModelConfig(arch="cnn", width=4, depth=2, blocks_per_stage=1, dropout=0.0, in_channels=1,
                                    image_size=(8, 8), num_classes=4, pixel_mean=(0.5,), pixel_std=(0.3,)))
    piped = build_strategy(two_fake_processes, DistributedParams(strategy="pipeline", microbatches=2))
    assert piped.prepare(model, CrossEntropy(), EIGHT_IMAGES, 4).batch_shares == 1


def test_the_pipeline_splits_the_built_in_models_into_runs_of_balanced_size() -> None:
    for arch in ("cnn", "resnet"):
        model = build_model(ModelConfig(arch=arch, width=8, depth=3, blocks_per_stage=2, dropout=0.0, in_channels=1,
                                        image_size=(8, 8), num_classes=10, pixel_mean=(0.5,), pixel_std=(0.3,)))
        parts = split_layers(model, 2)
        pixels = torch.rand(3, 1, 8, 8)
        model.eval()
        assert torch.equal(torch.nn.Sequential(*parts[0], *parts[1])(pixels), model(pixels))  # nothing left out
        sizes = [sum(parameter.numel() for layer in part for parameter in layer.parameters()) for part in parts]
        assert max(sizes) < 0.75 * sum(sizes)


def test_a_pipeline_cuts_a_live_teacher_into_its_stages_and_runs_one_it_cannot_cut_on_the_last(caplog) -> None:
    config = ModelConfig(arch="cnn", width=8, depth=3, blocks_per_stage=1, dropout=0.0, in_channels=1,
                         image_size=(8, 8), num_classes=10, pixel_mean=(0.5,), pixel_std=(0.3,))
    teacher = build_model(config).eval()
    first_run = split_layers(teacher, 2)[0]
    held = sum(parameter.numel() for layer in first_run for parameter in layer.parameters())
    total = sum(parameter.numel() for parameter in teacher.parameters())
    for frozen, expected in ((teacher, f"the live ConvNet runs in the pipeline's 2 stages: this one holds {held} of "
                                       f"its {total} parameters"),
                             (torch.nn.Linear(64, 10), "the live Linear cannot be cut into stages: it runs whole on "
                                                       "the last one")):
        with caplog.at_level("INFO", logger="pipelines.engine.strategies.pipeline"):
            PipelineParallel(TWO_PROCESSES, DistributedParams(strategy="pipeline", microbatches=2)).cut_live_models(
                [LiveModel(frozen)])
        assert expected in caplog.text
    assert 0 < held < total


def test_a_model_s_changes_to_the_distributed_section_apply_to_that_model_alone() -> None:
    params = load_params(SHIPPED_PARAMS, {
        "distributed.nnodes": 2, "distributed.grad_accum_steps": 2,
        "teacher.distributed": {"strategy": "fsdp", "nproc_per_node": 4},
        "distill.student_kd.distributed": {"grad_accum_steps": 1},
    })
    teacher, student = params.distributed_for(params.teacher), params.distributed_for(params.student)
    assert (teacher.strategy, teacher.nproc_per_node, teacher.nnodes, teacher.grad_accum_steps) == ("fsdp", 4, 2, 2)
    assert (student.strategy, student.nproc_per_node, student.grad_accum_steps) == ("ddp", "auto", 2)
    distilled = params.distributed_for(params.student_training("student_kd"))
    assert (distilled.strategy, distilled.nnodes, distilled.grad_accum_steps) == ("ddp", 2, 1)


def test_one_node_rendezvous_on_a_free_local_port_and_several_at_the_rendezvous_endpoint() -> None:
    one_node = torchrun_arguments(DistributedParams(nproc_per_node=2), "pipelines.train_teacher", ["--root", "r"])
    assert one_node[-4:] == ["-m", "pipelines.train_teacher", "--root", "r"]
    for flag, value in (("--nproc-per-node", "2"), ("--rdzv-backend", RDZV_BACKEND),
                        ("--rdzv-endpoint", "localhost:0")):
        assert one_node[one_node.index(flag) + 1] == value
    nodes = torchrun_arguments(DistributedParams(nproc_per_node=1, nnodes=3, rdzv_endpoint="10.1.2.3:29400",
                                                 rdzv_id="run7"), "pipelines.distill", [])
    for flag, value in (("--nnodes", "3"), ("--rdzv-backend", RDZV_BACKEND), ("--rdzv-endpoint", "10.1.2.3:29400"),
                        ("--rdzv-id", "run7")):
        assert nodes[nodes.index(flag) + 1] == value


@pytest.mark.parametrize(("key", "value", "message"), [
    ("nproc_per_node", 0, "nproc_per_node must be auto or at least 1"),
    ("rdzv_endpoint", "node-a", "rdzv_endpoint must be host:port"),
    ("grad_accum_steps", 0, "greater than or equal to 1"),
    ("timeout", 5, "unknown key(s) timeout; allowed keys here: nproc_per_node"),
    ("strategy", "zero3", "distributed.strategy: Input should be 'none', 'ddp', 'fsdp' or 'pipeline'"),
    ("microbatches", 0, "distributed.microbatches: Input should be greater than or equal to 1"),
    ("pipeline_schedule", "zb", "distributed.pipeline_schedule: Input should be 'gpipe' or '1f1b'"),
    ("lr_scaling", "cubic", "distributed.lr_scaling: Input should be 'none', 'linear' or 'sqrt'"),
    ("fsdp_replicas", 0, "fsdp_replicas must be nodes or at least 1"),
])
def test_a_bad_distributed_param_is_named(key: str, value, message: str) -> None:
    with pytest.raises(ParamsError, match=r"distributed") as caught:
        load_params(SHIPPED_PARAMS, {f"distributed.{key}": value})
    assert message in str(caught.value)


@pytest.mark.integration
@pytest.mark.parametrize("module, overrides, message", [
    ("pipelines.train_teacher", {"distributed.strategy": "pipeline", "distributed.pipeline_schedule": "1f1b",
                                 "distributed.microbatches": 1},
     "distributed.microbatches: 1f1b needs at least one micro-batch per stage (2 processes), got 1"),
    ("pipelines.train_student", {"distributed.sync_batchnorm": True}, "SyncBatchNorm runs on GPUs only"),
    ("pipelines.distill", {"distill.student_small": {"losses": [{"method": "ce"}],
                                                     "distributed": {"nproc_per_node": 1}}},
     "the students student_kd, student_small run on different processes (their distributed changes); train one at "
     "a time with --student NAME"),
    ("pipelines.distill", {"distill.student_small": {"losses": [{"method": "ce"}],
                                                     "distributed": {"strategy": "fsdp", "fsdp_replicas": 3}}},
     "distributed.fsdp_replicas: 3 copies of the model cannot be spread evenly over 2 processes"),
    ("pipelines.distill --student nosuch", {}, "no student 'nosuch' in {params_file}'s distill section"),
])
def test_the_launcher_refuses_what_its_workers_would_before_starting_them(
    tmp_path: Path, module: str, overrides: dict, message: str
) -> None:
    params_file = tmp_path / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, params_file)
    write_overrides(params_file, {"device": "cpu", "distributed.nproc_per_node": 2, **overrides})
    module, *options = module.split()

    result = run([sys.executable, "-m", module, "--params", str(params_file), "--root", str(tmp_path), *options],
                 PROJECT_ROOT, check=False)

    assert result.returncode == 2 and message.format(params_file=params_file) in result.stderr
    assert "Traceback" not in result.stderr and "[rank" not in result.stderr, "no worker was started"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.integration
@pytest.mark.parametrize("processes", [1, 2])
def test_a_missing_input_stops_the_stage_with_its_message_alone_on_one_process_or_several(
    tmp_path: Path, processes: int
) -> None:
    params_file = tmp_path / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, params_file)
    write_overrides(params_file, {"device": "cpu", "distributed.nproc_per_node": processes})

    result = run([sys.executable, "-m", "pipelines.train_teacher", "--params", str(params_file), "--root",
                  str(tmp_path)], PROJECT_ROOT, check=False)

    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output
    assert f"{tmp_path}/data/prepared/card.json: no such file; run the stage that writes it (dvc repro)" in output
    if processes > 1:
        assert "pipelines.train_teacher failed on rank" in output and "'s message is above" in output


def stage_root(tmp_path: Path, tiny_params: Params, name: str, section: str = "distributed",
               **distributed) -> tuple[Paths, Path]:
    """A root with the tiny prepared data and transfer set, and a params file asking for `distributed` in
    `section` (the `distributed` section, or a model's changes to it such as `teacher.distributed`)."""
    paths = Paths(tmp_path / name)
    prepare(tiny_params, paths)
    augment(tiny_params, paths)
    params_file = paths.root / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, params_file)
    overrides = {f"{section}.{key}": value for key, value in distributed.items()}
    write_overrides(params_file, {**TINY_OVERRIDES, "device": "cpu", **overrides})
    return paths, params_file


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "pipeline"])
def test_the_teacher_stage_launches_its_own_workers_and_evaluate_scores_their_checkpoint(
    tmp_path: Path, tiny_params: Params, strategy: str
) -> None:
    # The teacher's own changes to the `distributed` section: it runs on two processes, the student on one.
    paths, params_file = stage_root(tmp_path, tiny_params, "root", "teacher.distributed", nproc_per_node=2,
                                    strategy=strategy)

    result = run([sys.executable, "-m", "pipelines.train_teacher", "--params", str(params_file), "--root",
                  str(paths.root)], PROJECT_ROOT)
    student = run([sys.executable, "-m", "pipelines.train_student", "--params", str(params_file), "--root",
                   str(paths.root)], PROJECT_ROOT)
    assert "device cpu x 1" in student.stderr and "[rank" not in student.stderr

    output = result.stdout + result.stderr
    assert "device cpu x 2" in output
    assert "[rank0]:" in output and "[rank1]:" in output  # every rank's output, prefixed with it
    checkpoint = load_checkpoint(paths.model("teacher"))
    assert checkpoint.metrics["epochs"] == 1
    model, _ = load_model(paths.model("teacher"))
    test = read_image_set(paths.split("test"))
    logits = predict_logits(model, test.images, torch.device("cpu"))
    assert logits.shape == (len(test), 10)
    assert [path.name for path in paths.root.rglob(".*tmp-*")] == [], "no temporary files left by either rank"


def two_nodes(tmp_path: Path, tiny_params: Params, port: int, resume_folder: dict[str, Path],
              changes: tuple[dict, dict] = ({}, {}), kill_after: str | None = None
              ) -> tuple[list[Paths], list[subprocess.CompletedProcess]]:
    """Two launchers on loopback, a node each with its own project root, two processes per node under HSDP by
    node (each node holds a copy of the model, sharded over its processes); `resume_folder`: each node's
    resume.folder by name; `changes`: each node's own param changes; `kill_after`: once the first node
    prints a line holding it, the second node's worker of local rank 1 is SIGKILLed."""
    nodes = [stage_root(tmp_path, tiny_params, name, nproc_per_node=2, nnodes=2, strategy="fsdp",
                        fsdp_replicas="nodes", rdzv_endpoint=f"127.0.0.1:{port}", timeout_s=120)
             for name in resume_folder]
    for (_, params_file), folder, own in zip(nodes, resume_folder.values(), changes):
        write_overrides(params_file, {"resume.folder": str(folder), **own})
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    launchers = [subprocess.Popen([sys.executable, "-m", "pipelines.train_student", "--params", str(params_file),
                                   "--root", str(paths.root)], cwd=PROJECT_ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for paths, params_file in nodes]
    seen = ""
    if kill_after is not None:
        for line in launchers[0].stdout:
            seen += line
            if kill_after in line:
                break
        os.kill(local_rank_1(["-f", "--", f"-u -m pipelines.train_student --params {nodes[1][1]}"]), signal.SIGKILL)
    outputs = [launcher.communicate(timeout=300)[0] for launcher in launchers]
    outputs[0] = seen + outputs[0]
    return [paths for paths, _ in nodes], [subprocess.CompletedProcess(launcher.args, launcher.returncode, output)
                                           for launcher, output in zip(launchers, outputs)]


@pytest.mark.slow
def test_two_launchers_with_two_nodes_meet_on_loopback_and_one_of_them_writes(tmp_path: Path,
                                                                              tiny_params: Params) -> None:
    shared = tmp_path / "shared-resume"  # what a shared file system gives both nodes
    nodes, results = two_nodes(tmp_path, tiny_params, 29431, {"node0": shared, "node1": shared})
    outputs = [result.stdout for result in results]
    assert [result.returncode for result in results] == [0, 0], outputs
    assert all("device cpu x 4" in output for output in outputs)  # two processes on each of two nodes
    assert "HSDP: 2 copies of the model, each sharded across 2 processes" in outputs[0] + outputs[1]
    prefixes = [{prefix for prefix in ("[rank0]:", "[rank1]:", "[rank2]:", "[rank3]:") if prefix in output}
                for output in outputs]
    assert sorted(map(sorted, prefixes)) == [["[rank0]:", "[rank1]:"], ["[rank2]:", "[rank3]:"]]  # global ranks
    written = [paths.model("student_baseline").exists() for paths in nodes]
    assert sorted(written) == [False, True]  # the node of global rank 0 writes the checkpoint
    assert not shared.exists(), "the saves are removed once the stage succeeds"


@pytest.mark.slow
def test_nodes_that_do_not_share_the_resume_folder_are_refused_before_training(tmp_path: Path,
                                                                               tiny_params: Params) -> None:
    nodes, results = two_nodes(tmp_path, tiny_params, 29432, {"node0": tmp_path / "own0", "node1": tmp_path / "own1"})
    assert [result.returncode for result in results] == [1, 1]  # the machines', not the params', as in one process
    assert all("resume.folder: the nodes do not share" in result.stdout for result in results)
    assert "set it to a folder every node reads and writes (a shared file system)" in results[0].stdout
    assert all("Traceback" not in result.stdout and "'s message is above" in result.stdout for result in results)
    assert not any(paths.model("student_baseline").exists() for paths in nodes)


@pytest.mark.slow
def test_nodes_started_with_different_params_are_refused_before_training(tmp_path: Path, tiny_params: Params) -> None:
    shared = tmp_path / "shared-resume"
    nodes, results = two_nodes(tmp_path, tiny_params, 29433, {"node0": shared, "node1": shared},
                               changes=({}, {"student.optimizer.lr": 0.5}))
    assert [result.returncode for result in results] == [2, 2], [result.stdout for result in results]
    assert all("the processes were started with different params or inputs: rank 2 on " in result.stdout
               for result in results)
    assert not any(paths.model("student_baseline").exists() for paths in nodes)


@pytest.mark.slow
def test_a_node_left_alone_at_the_rendezvous_fails_after_the_timeout_naming_the_endpoint(
    tmp_path: Path, tiny_params: Params
) -> None:
    paths, params_file = stage_root(tmp_path, tiny_params, "node0", nproc_per_node=1, nnodes=2,
                                    rdzv_endpoint="127.0.0.1:29434", timeout_s=5)
    started = time.monotonic()
    result = run([sys.executable, "-m", "pipelines.train_student", "--params", str(params_file), "--root",
                  str(paths.root)], PROJECT_ROOT, check=False)
    assert result.returncode == 1 and time.monotonic() - started < 60
    assert ("pipelines.train_student: the 2 nodes did not meet at distributed.rdzv_endpoint 127.0.0.1:29434 "
            "(rdzv_id distill-pipeline) within distributed.timeout_s (5 s)") in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_batch_smaller_than_the_processes_is_refused(tmp_path: Path, tiny_params: Params) -> None:
    paths, params_file = stage_root(tmp_path, tiny_params, "root", nproc_per_node=2)
    write_overrides(params_file, {"student.train.batch_size": 1})
    result = run([sys.executable, "-m", "pipelines.train_student", "--params", str(params_file), "--root",
                  str(paths.root)], PROJECT_ROOT, check=False)
    assert result.returncode == 2
    assert ("student_baseline's train.batch_size: 1 rows a step cannot be shared out over 2 processes"
            in result.stdout + result.stderr)


def teacher_training(tmp_path: Path, tiny_params: Params, **distributed) -> tuple[Paths, subprocess.Popen, str]:
    """The teacher stage on 2 processes (50 epochs), once the main rank has logged its first epoch: its
    paths, its launcher and the `pgrep -f` pattern of its 2 workers."""
    paths, params_file = stage_root(tmp_path, tiny_params, "root", nproc_per_node=2, **distributed)
    write_overrides(params_file, {"teacher.train.epochs": 50})
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    launcher = subprocess.Popen([sys.executable, "-m", "pipelines.train_teacher", "--params", str(params_file),
                                 "--root", str(paths.root)], cwd=PROJECT_ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in launcher.stdout:
        if line.startswith("[rank0]:") and "epoch 1/50" in line:
            break
    pattern = f"-u -m pipelines.train_teacher --params {params_file}"
    assert len(subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout.split()) == 2
    return paths, launcher, pattern


@pytest.mark.slow
def test_a_killed_worker_fails_the_stage_promptly_naming_its_rank(tmp_path: Path, tiny_params: Params) -> None:
    paths, launcher, workers = teacher_training(tmp_path, tiny_params, timeout_s=60)
    killed = time.monotonic()
    os.kill(local_rank_1(["-f", "--", workers]), signal.SIGKILL)
    rest = launcher.communicate(timeout=120)[0]
    assert time.monotonic() - killed < 60, "the stage failed within the collective timeout, not later"
    assert launcher.returncode == 1
    assert "pipelines.train_teacher failed on rank 1 (exit code -9)" in rest
    assert not paths.model("teacher").exists()


@pytest.mark.slow
def test_a_worker_s_uncaught_error_reaches_the_output_with_its_rank_once_and_fails_the_command() -> None:
    result = run([sys.executable, "-m", "tests.crash_worker"], PROJECT_ROOT, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "[rank1]:ValueError: an error nothing catches" in output  # torchrun's prefix, not torch's hook's too
    assert "[rank1]:[rank1]:" not in output
    assert "tests.crash_worker failed on rank 1 (exit code 1)" in output


@pytest.mark.slow
def test_a_stopped_worker_fails_the_stage_after_the_collective_timeout_saying_so(tmp_path: Path,
                                                                                tiny_params: Params) -> None:
    _, launcher, workers = teacher_training(tmp_path, tiny_params, timeout_s=5)
    stopped = time.monotonic()
    os.kill(local_rank_1(["-f", "--", workers]), signal.SIGSTOP)  # rank 1 hangs: alive, silent
    rest = launcher.communicate(timeout=120)[0]
    # The timeout, then torchrun's 30 s of grace for the stopped worker to end on SIGTERM before its SIGKILL.
    assert time.monotonic() - stopped < 5 + 30 + 20
    assert launcher.returncode == 1
    assert "rank 0 waited longer than distributed.timeout_s (5 s) for the other processes in a collective" in rest


@pytest.mark.slow
def test_workers_end_with_a_launcher_killed_outright(tmp_path: Path, tiny_params: Params) -> None:
    paths, launcher, pattern = teacher_training(tmp_path, tiny_params)
    launcher.kill()  # SIGKILL: torchrun's agent cannot stop its workers itself
    launcher.wait()
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", "--", pattern]).returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert subprocess.run(["pgrep", "-f", "--", pattern]).returncode == 1, "no worker trains on alone"
    assert not paths.model("teacher").exists()

