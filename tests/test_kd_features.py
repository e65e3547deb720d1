"""The feature-based distillation terms (fitnet, at, rkd): layers named by module path and captured with
forward hooks that are released after training, the live teacher, connectors that train with the student,
values against hand computations, clear errors for bad layer paths, and runs of the distill stage with
each method, in one process and in two."""

from __future__ import annotations

import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipelines.config import ParamsError
from pipelines.config.distributed import DistributedParams
from pipelines.core.paths import Paths
from pipelines.data.images import ImageSet
from pipelines.distill import distill
from pipelines.engine.checkpoint import load_checkpoint, load_model, save_checkpoint
from pipelines.engine.objective import Batch
from pipelines.engine.strategies import build_strategy
from pipelines.engine.runtime import Runtime
from pipelines.kd.at import AT, attention
from pipelines.kd.base import Context, Distillation
from pipelines.kd.crd import CRD, candidate_similarity, nce_loss
from pipelines.engine.capture import Capture, layer
from pipelines.kd.fitnet import FitNet
from pipelines.kd.rkd import RKD, normalized_distances, triplet_angles
from pipelines.kd.teacher import Teacher, write_teacher_features
from pipelines.models import ModelConfig, build_model
from tests.conftest import PROJECT_ROOT, SHIPPED_PARAMS, STORED_KD, TINY_OVERRIDES, load_params, run
from tasks.params import write_overrides


def config(width: int, depth: int) -> ModelConfig:
    return ModelConfig(arch="cnn", width=width, depth=depth, blocks_per_stage=1, dropout=0.0, in_channels=1,
                       image_size=(8, 8), num_classes=4, pixel_mean=(0.5,), pixel_std=(0.3,))


@pytest.fixture
def setting(tmp_path: Path) -> tuple[torch.nn.Module, Context, ImageSet]:
    """A student (width 2, depth 1), a trained-looking teacher (width 4, depth 2) saved as models/teacher.pt,
    and 16 random 8x8 images."""
    torch.manual_seed(0)
    paths = Paths(tmp_path)
    save_checkpoint(paths.model("teacher"), build_model(config(4, 2)).state_dict(), config(4, 2), {})
    images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    train = ImageSet(images, torch.randint(0, 4, (16,)), ["a", "b", "c", "d"])
    context = Context(paths, 0.0, Teacher(paths.model("teacher"), paths.teacher_features("s")),
                      key="distill.s.losses.0")
    return build_model(config(2, 1)), context, train


def batch_of(train: ImageSet) -> Batch:
    return Batch(images=train.images.float() / 255, labels=train.labels, rows=torch.arange(len(train)))


def test_hooks_capture_the_named_layers_and_are_released(setting) -> None:
    student, _, train = setting
    capture = Capture(student, [("features.0", "key"), ("classifier", "key")])
    logits = student(batch_of(train).images)
    assert capture.values["features.0"].shape == (16, 2, 8, 8)  # the first convolution's output
    assert torch.equal(capture.values["classifier"], logits)
    capture.remove()
    assert not student.features[0]._forward_hooks and not student.classifier._forward_hooks


def test_a_wrong_layer_path_names_the_key_and_lists_the_model_s_layers(setting) -> None:
    student, _, _ = setting
    with pytest.raises(ParamsError) as caught:
        layer(student, "features.9", "distill.s.losses.0.student_layer")
    message = str(caught.value)
    assert message.startswith("distill.s.losses.0.student_layer: ConvNet has no layer 'features.9'; its layers: ")
    assert "features, features.0, features.1" in message and "classifier" in message


def test_fitnet_is_the_mean_squared_error_through_a_connector_that_trains_with_the_student(setting) -> None:
    student, context, train = setting
    term = FitNet.create(FitNet.Options(), context)  # features of 2 channels (student) against 8 (teacher)
    objective = Distillation([("fitnet", 1.0, term)])
    objective.setup(student, train)
    assert isinstance(term.connector.project, torch.nn.Conv2d)
    assert (term.connector.project.in_channels, term.connector.project.out_channels) == (2, 8)
    assert term.connector.size == (4, 4)  # the teacher's maps: 8x8 pooled once

    optimizer = torch.optim.SGD([*student.parameters(), *objective.parameters()], lr=0.1)
    loss, logged = objective(student, batch_of(train))
    [(student_features, teacher_features)] = term.features(batch_of(train))
    by_hand = (F.interpolate(term.connector.project(student_features), size=(4, 4), mode="bilinear")
               - teacher_features).pow(2).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5) and logged["fitnet"].item() == loss.item()
    before = term.connector.project.weight.detach().clone()
    loss.backward()
    assert term.connector.project.weight.grad.abs().sum() > 0  # the connector receives gradients ...
    assert not any(p.grad is not None for p in context.teacher.model.module.parameters())  # ... the teacher none
    optimizer.step()
    assert not torch.equal(term.connector.project.weight, before)  # ... and the optimizer steps it

    objective.teardown()
    assert not student.features._forward_hooks and not context.teacher.model.module.features._forward_hooks


def test_fitnet_s_gradient_for_same_shaped_features_is_twice_the_gap_over_the_elements() -> None:
    student = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    term = FitNet.__new__(FitNet)
    torch.nn.Module.__init__(term)
    term.connector = torch.nn.Identity()
    term.features = lambda batch: [(student, teacher)]  # the captured pair, without hooks
    term(None, None).backward()
    assert torch.allclose(student.grad, 2 * (student - teacher).detach() / student.numel())


def test_attention_maps_and_the_at_term_match_the_hand_computation() -> None:
    features = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]], [[2.0, 0.0], [1.0, -1.0]]]])  # [1, 2, 2, 2]
    summed = [1 + 4, 4 + 0, 0 + 1, 9 + 1]  # sum over channels of squares, per position
    norm = sum(value**2 for value in summed) ** 0.5
    assert torch.allclose(attention(features, 2.0), torch.tensor([[value / norm for value in summed]]))
    other = torch.tensor([[[[0.5, 1.0], [2.0, 0.0]]]])  # one channel
    other_map = [0.25, 1.0, 4.0, 0.0]
    other_norm = sum(value**2 for value in other_map) ** 0.5
    expected = sum((a / norm - b / other_norm) ** 2 for a, b in zip(summed, other_map)) / 4
    term = AT.__new__(AT)
    torch.nn.Module.__init__(term)
    term.p, term.features = 2.0, (lambda batch: [(features, other)])
    assert term(None, None).item() == pytest.approx(expected, rel=1e-6)


def test_rkd_s_distances_and_angles_match_the_definitions() -> None:
    embeddings = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    distances = torch.tensor([[0, 3, 4], [3, 0, 5], [4, 5, 0]], dtype=torch.float64)
    assert torch.allclose(normalized_distances(embeddings), distances / 4.0)  # the mean of 3, 4, 5
    angles = triplet_angles(embeddings).view(3, 3, 3)
    # At image 0, between images 1 and 2: a right angle. At image 1, between 0 and 2: cos = 3/5.
    assert angles[0, 1, 2].item() == pytest.approx(0.0, abs=1e-12)
    assert angles[1, 0, 2].item() == pytest.approx(3 / 5)


def test_rkd_reads_the_embeddings_entering_the_classifier_and_is_zero_against_itself(setting) -> None:
    student, context, train = setting
    term = RKD.create(RKD.Options(), context)
    objective = Distillation([("rkd", 1.0, term)])
    objective.setup(student, train)
    loss, _ = objective(student, batch_of(train))
    [(student_embedding, teacher_embedding)] = term.features(batch_of(train))
    assert student_embedding.shape == (16, 2) and teacher_embedding.shape == (16, 8)  # what enters the classifiers
    assert loss.item() > 0.0
    embeddings = torch.randn(16, 8)
    term.features = lambda batch: [(embeddings, embeddings.clone())]  # a student with the teacher's relations
    assert term(None, None).item() == 0.0


def test_the_nce_loss_matches_its_definition() -> None:
    scores = torch.tensor([[0.5, 0.1, 0.2], [2.0, 0.05, 0.3]], dtype=torch.float64)  # positive first, 2 negatives
    images, eps = 10, 1e-7
    noise = 2 / images
    by_hand = -sum(math.log(row[0] / (row[0] + noise + eps)) + sum(math.log(noise / (n + noise + eps)) for n in row[1:])
                   for row in scores.tolist()) / 2
    assert nce_loss(scores, images).item() == pytest.approx(by_hand, rel=1e-12)


def test_crd_projects_both_embeddings_and_moves_each_image_s_bank_rows_toward_them(setting) -> None:
    student, context, train = setting
    term = CRD.create(CRD.Options(feature_dim=6, negatives=5), context)
    objective = Distillation([("crd", 1.0, term)])
    objective.setup(student, train)
    assert (term.student_head.in_features, term.teacher_head.in_features, term.student_bank.shape) == (2, 8, (16, 6))
    before = term.student_bank.clone()
    batch = Batch(images=train.images[:4].float() / 255, labels=train.labels[:4], rows=torch.tensor([3, 5, 7, 9]))
    loss, _ = objective(student, batch)
    loss.backward()
    assert term.student_head.weight.grad.abs().sum() > 0 and term.teacher_head.weight.grad.abs().sum() > 0
    changed = (term.student_bank != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [3, 5, 7, 9]  # only the batch's rows, each still of norm 1
    assert torch.allclose(term.student_bank.norm(dim=1), torch.ones(16))
    assert set(term.state_dict()) >= {"student_bank", "teacher_bank", "student_head.weight", "teacher_head.weight"}


@pytest.mark.parametrize("bank_rows", [40, 4000])  # one product with the whole bank; the rows gathered
def test_crd_scores_each_embedding_against_the_bank_rows_its_candidates_name(bank_rows: int) -> None:
    generator = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(bank_rows, 6, generator=generator, dtype=torch.float64), dim=1)
    candidates = torch.randint(0, bank_rows, (3, 9), generator=generator)
    candidates[0, 1:3] = candidates[0, 0]  # an image drawn twice counts twice
    embeddings = torch.randn(3, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    similarity = candidate_similarity(bank, candidates, embeddings)
    by_rows = torch.stack([bank[row] @ embedding for row, embedding in zip(candidates, embeddings)])
    assert torch.allclose(similarity, by_rows)
    weights = torch.randn(3, 9, generator=generator, dtype=torch.float64)
    (gradient,) = torch.autograd.grad((similarity * weights).sum(), embeddings)
    assert torch.allclose(gradient, torch.einsum("bk,bkd->bd", weights, bank[candidates]))


LAYERS = [("features", False), ("classifier", True)]  # a map, and the embedding entering the classifier


def test_teacher_features_that_fit_are_stored_and_read_back_as_the_live_teacher_computes_them(setting,
                                                                                               tmp_path) -> None:
    _, context, train = setting
    folder = context.paths.teacher_features("s")
    manifest = write_teacher_features(folder, context.paths.model("teacher"), train, LAYERS, 2**30, torch.device("cpu"))
    assert manifest["cached"] and set(manifest["layers"]) == {"features.output", "classifier.input"}
    assert manifest["layers"]["features.output"]["shape"] == [8, 4, 4]

    stored = Teacher(context.paths.model("teacher"), folder)
    stored.attach([(layer, "key") for layer in LAYERS], torch.device("cpu"), len(train))
    assert stored.model is None and not stored.live  # nothing runs the teacher
    live = Teacher(context.paths.model("teacher"), tmp_path / "no-cache")
    live.attach([(layer, "key") for layer in LAYERS], torch.device("cpu"), len(train))
    rows = torch.tensor([5, 0, 11])
    batch = Batch(images=train.images[rows].float() / 255, labels=train.labels[rows], rows=rows)
    from_disk, computed = stored.features(batch, torch.device("cpu")), live.features(batch, torch.device("cpu"))
    for name in LAYERS:
        assert torch.allclose(from_disk[name], computed[name], atol=1e-6), name


def test_teacher_features_too_big_for_the_cache_are_not_stored_and_the_teacher_runs_live(setting, caplog) -> None:
    _, context, train = setting
    folder = context.paths.teacher_features("s")
    manifest = write_teacher_features(folder, context.paths.model("teacher"), train, LAYERS, 1000, torch.device("cpu"))
    assert not manifest["cached"] and "more than teacher_features.max_cache_gb" in manifest["reason"]
    assert [path.name for path in folder.iterdir()] == ["manifest.json"]
    teacher = Teacher(context.paths.model("teacher"), folder)
    with caplog.at_level("INFO"):
        teacher.attach([(LAYERS[0], "key")], torch.device("cpu"), len(train))
    assert teacher.model is not None and "the teacher runs live beside the student (the features take" in caplog.text


@pytest.fixture
def distill_root(trained_pipeline, tmp_path: Path):
    """A copy of the tiny trained pipeline and a params file to change the student's terms in."""
    _, shared = trained_pipeline
    paths = Paths(tmp_path / "root")
    shutil.copytree(shared.root, paths.root)
    params_file = paths.root / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, params_file)
    return paths, params_file


@pytest.mark.slow
@pytest.mark.parametrize("losses", [
    [{"method": "kd", "weight": 0.9}, {"method": "ce", "weight": 0.1}],
    [{"method": "dkd"}, {"method": "ce"}],
    [{"method": "dist"}, {"method": "ce"}],
    [{"method": "fitnet", "student_layer": "features.3", "teacher_layer": "features.7"}, {"method": "ce"}],
    [{"method": "at", "layers": [["features.2", "features.5"], ["features", "features"]]}, {"method": "ce"}],
    [{"method": "rkd"}, {"method": "kd"}, {"method": "ce"}],
    [{"method": "crd", "weight": 0.8}, {"method": "kd"}, {"method": "ce"}],
], ids=["kd", "dkd", "dist", "fitnet", "at", "rkd+kd", "crd+kd"])
def test_one_epoch_of_the_distill_stage_with_each_method(distill_root, losses: list[dict]) -> None:
    paths, params_file = distill_root
    write_overrides(params_file, {**TINY_OVERRIDES, "distill.student_kd.losses": losses})
    params = load_params(params_file)

    metrics = distill(params, paths)["student_kd"]

    for term in losses:
        assert metrics[f"train_{term['method']}"] >= 0.0  # each term logged under its name
    model, checkpoint = load_model(paths.model("student_kd"))  # loadable on its own
    assert checkpoint.metrics["epochs"] == 1
    heads = torch.load(paths.heads("student_kd"), weights_only=True)
    assert bool(heads) == (losses[0]["method"] in ("fitnet", "crd"))  # connector, heads, banks: apart from the student


@pytest.mark.integration
def test_a_bad_layer_path_stops_the_stage_with_exit_code_2_naming_the_key(distill_root) -> None:
    paths, params_file = distill_root
    write_overrides(params_file, {**TINY_OVERRIDES, "distill.student_kd.losses": [
        {"method": "fitnet", "student_layer": "features.99"}, {"method": "ce"}]})
    result = run([sys.executable, "-m", "pipelines.distill", "--student", "student_kd", "--params", str(params_file),
                  "--root", str(paths.root)], PROJECT_ROOT, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("distill.student_kd.losses.0.student_layer: ConvNet has no layer 'features.99'; "
            "its layers: features") in result.stderr
    assert load_checkpoint(paths.model("student_kd")).state_dict  # the last good student is still there


@pytest.mark.slow
def test_the_teacher_features_stage_stores_what_the_student_then_reads_instead_of_running_the_teacher(
        distill_root) -> None:
    paths, params_file = distill_root
    write_overrides(params_file, {**TINY_OVERRIDES, **STORED_KD, "distill.student_kd.losses": [
        {"method": "fitnet", "teacher_layer": "features.3"}, {"method": "rkd"}, {"method": "ce"}]})
    command = ["--student", "student_kd", "--params", str(params_file), "--root", str(paths.root)]
    stored = run([sys.executable, "-m", "pipelines.teacher_features", *command], PROJECT_ROOT)
    assert "stored features.3.output, classifier.input" in stored.stderr
    trained = run([sys.executable, "-m", "pipelines.distill", *command], PROJECT_ROOT)
    assert "teacher features of features.3.output: read from" in trained.stderr
    assert "runs live" not in trained.stderr


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fitnet", "crd"])
def test_two_processes_distill_with_a_feature_based_method(distill_root, method: str) -> None:
    paths, params_file = distill_root
    write_overrides(params_file, {**TINY_OVERRIDES, "device": "cpu", "distributed.nproc_per_node": 2,
                                  "distill.student_kd.losses": [{"method": method}, {"method": "ce"}]})
    result = run([sys.executable, "-m", "pipelines.distill", "--student", "student_kd", "--params", str(params_file),
                  "--root", str(paths.root)], PROJECT_ROOT)
    assert "device cpu x 2" in result.stderr + result.stdout
    assert torch.load(paths.heads("student_kd"), weights_only=True)  # what it learned, averaged by DDP with the student
    load_model(paths.model("student_kd"))


@pytest.mark.slow
def test_under_fsdp_the_live_teacher_is_sharded_and_the_student_learns_what_it_learns_under_ddp(distill_root) -> None:
    paths, params_file = distill_root  # no teacher_features stage ran: the teacher runs live beside the student
    command = [sys.executable, "-m", "pipelines.distill", "--student", "student_kd", "--params", str(params_file),
               "--root", str(paths.root)]
    learned, logs = {}, {}
    for strategy in ("ddp", "fsdp"):
        write_overrides(params_file, {**TINY_OVERRIDES, "device": "cpu", "distributed.nproc_per_node": 2,
                                      "distributed.strategy": strategy,
                                      "distill.student_kd.losses": [{"method": "fitnet"}, {"method": "ce"}]})
        logs[strategy] = run(command, PROJECT_ROOT).stderr
        learned[strategy] = {**load_checkpoint(paths.model("student_kd")).state_dict,
                             **torch.load(paths.heads("student_kd"), weights_only=True)}

    assert "the teacher runs live" in logs["ddp"] and "the teacher runs live" in logs["fsdp"]
    assert "is sharded" not in logs["ddp"]  # under ddp each process holds the whole teacher
    assert "the live ConvNet is sharded across 2 processes: this one holds" in logs["fsdp"]
    assert learned["ddp"].keys() == learned["fsdp"].keys()
    for key, value in learned["ddp"].items():
        assert (value.float() - learned["fsdp"][key].float()).abs().max() <= 1e-5, key


def test_a_pipeline_names_a_layer_it_does_not_run_as_one(setting) -> None:
    # A pipeline runs `features`' layers one by one, never `features` itself, so its hooks would never fire:
    # on the student, and on the live teacher run in the pipeline's stages (fitnet's teacher_layer: features).
    student, context, train = setting
    objective = Distillation([("fitnet", 1.0, FitNet.create(FitNet.Options(student_layer="features"), context))])
    pipeline = build_strategy(Runtime(torch.device("cpu"), rank=0, world_size=2),
                              DistributedParams(strategy="pipeline", microbatches=2))
    with pytest.raises(ParamsError, match=re.escape(
            "the student's loss reads layer(s) features (distill.s.losses.0.student_layer), features "
            "(distill.s.losses.0.teacher_layer), which a pipeline does not run as one")):
        pipeline.prepare(student, objective, train, 8)  # before any collective


@pytest.mark.slow
def test_under_a_pipeline_the_layer_outputs_of_student_and_live_teacher_reach_the_loss_from_their_stages(
    distill_root,
) -> None:
    # Three stages (the student's normalization and features.0 to 2, features.3 to 5, the head): fitnet on a
    # layer of the first, at on one of the first two, so their outputs pass through the middle one to reach
    # the loss on the last. The live teacher is cut into three stages too, each run beside the student's: its
    # features.3 (fitnet's, at's first) is made on the first or second stage and passed along the same way.
    paths, params_file = distill_root
    losses = [{"method": "fitnet", "student_layer": "features.0", "teacher_layer": "features.3"},
              {"method": "at", "layers": [["features.0", "features.3"], ["features.5", "features.7"]]},
              {"method": "ce"}]
    command = [sys.executable, "-m", "pipelines.distill", "--student", "student_kd", "--params", str(params_file),
               "--root", str(paths.root)]
    learned, logs = {}, {}
    # One process (a pipeline of one stage) accumulates the same 2 micro-batches the pipeline's stages see.
    for name, processes in {"one": 1, "piped": 3}.items():
        write_overrides(params_file, {**TINY_OVERRIDES, "device": "cpu", "distill.student_kd.losses": losses,
                                      "distill.student_kd.train.batch_size": 24, "distributed.microbatches": 2,
                                      "distributed.strategy": "pipeline", "distributed.nproc_per_node": processes})
        logs[name] = run(command, PROJECT_ROOT).stderr
        learned[name] = {**load_checkpoint(paths.model("student_kd")).state_dict,
                         **torch.load(paths.heads("student_kd"), weights_only=True)}

    assert "the teacher runs live" in logs["piped"]
    assert "the live ConvNet runs in the pipeline's 3 stages: this one holds" in logs["piped"]
    assert learned["one"].keys() == learned["piped"].keys() and any(key.startswith("terms.0") for key in learned["one"])
    for key, value in learned["one"].items():
        assert (value.float() - learned["piped"][key].float()).abs().max() <= 1e-5, key

