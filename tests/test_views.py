"""Fresh views (pipelines/engine/views.py): each training step sees each of its images in a new augmented view,
made on the device, a function of the seed, the epoch and the image alone; a teacher run live labels exactly
that view."""

from __future__ import annotations

import re

import pytest
import torch

from pipelines.config import ParamsError, load_params
from pipelines.config.data import MixParams, TransformParams
from pipelines.config.optim import SGDParams
from pipelines.config.schedules import ConstantSchedule
from pipelines.config.training import ModelParams, RegularizationParams, TrainingParams, TrainParams
from pipelines.data.draws import KeyedDraws
from pipelines.data.images import ImageSet
from pipelines.data.transforms import augment_batch, view_batch
from pipelines.engine.batches import BatchSource
from pipelines.engine.loop import fit
from pipelines.engine.objective import Batch
from pipelines.engine.runtime import Runtime
from pipelines.engine.views import fresh_views
from pipelines.kd.base import Distillation, TeacherLogits
from pipelines.kd.kd import KD
from pipelines.kd.teacher import Teacher
from pipelines.models import ModelConfig, build_model
from tests.conftest import SHIPPED_PARAMS

CPU = Runtime(torch.device("cpu"))
VIEWS = TransformParams(rotation_degrees=15.0, translate=0.1, scale=(0.9, 1.1), pad_crop=1, noise_std=0.05,
                        cutout_probability=0.5, cutout_size=2)
MIXED = VIEWS.model_copy(update={"mix": MixParams(mixup_alpha=0.4, cutmix_alpha=1.0)})
CONFIG = ModelConfig(arch="cnn", width=4, depth=2, blocks_per_stage=1, dropout=0.0, in_channels=1, image_size=(8, 8),
                     num_classes=4, pixel_mean=(0.5,), pixel_std=(0.3,))


def image_set(count: int = 24) -> ImageSet:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 1, 8, 8), dtype=torch.uint8, generator=generator)
    return ImageSet(images, torch.arange(count) % 4, ["a", "b", "c", "d"])


def views_of(train: ImageSet, params: TransformParams, seed: int = 0):
    return fresh_views(BatchSource(train, CPU), train, params, seed, CPU)


def test_an_image_s_view_depends_on_the_seed_the_epoch_and_the_image_alone() -> None:
    train = image_set()
    epoch = views_of(train, MIXED).of_epoch(3)
    whole = epoch(torch.arange(24))
    shuffled = torch.tensor([17, 3, 9, 0])
    again = epoch(shuffled)  # the same images in another batch, of another size, in another order
    assert torch.equal(again.images, whole.images[shuffled])
    assert torch.equal(again.mix_labels, whole.mix_labels[shuffled])
    assert torch.equal(again.mix_weights, whole.mix_weights[shuffled])
    assert torch.equal(views_of(train, MIXED).of_epoch(3)(shuffled).images, again.images)  # a rerun, as resumed
    assert not torch.equal(views_of(train, MIXED).of_epoch(4)(shuffled).images, again.images)  # a fresh epoch
    assert not torch.equal(views_of(train, MIXED, seed=1).of_epoch(3)(shuffled).images, again.images)
    assert not torch.equal(again.images, BatchSource(train, CPU)(shuffled).images)


def test_views_off_leave_the_stored_images_as_they_are() -> None:
    train = image_set()
    rows = torch.tensor([5, 1])
    for params in (None, TransformParams()):
        batch = views_of(train, params).of_epoch(0)(rows)
        assert torch.equal(batch.images, train.images[rows].float() / 255.0) and batch.mix_labels is None


def test_mixed_views_blend_each_image_with_a_partner_s_view_and_weigh_both_labels() -> None:
    train = image_set()
    batch = views_of(train, MIXED).of_epoch(0)(torch.arange(24))
    assert batch.mix_weights is not None and batch.mix_labels is not None
    assert ((batch.mix_weights > 0) & (batch.mix_weights < 1)).float().mean() > 0.5
    assert torch.equal(batch.labels, train.labels)  # each image keeps its own label, weighted by its share


def test_a_pad_crop_shifts_each_image_by_whole_pixels_with_zeros_coming_in() -> None:
    images = torch.rand(32, 1, 8, 8)
    out = view_batch(images, TransformParams(pad_crop=2), KeyedDraws(0, 0, torch.arange(32), torch.device("cpu")))
    for image, viewed in zip(images, out):
        shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                  if torch.allclose(viewed, shifted(image, dy, dx), atol=1e-5)]
        assert len(shifts) == 1


def lowbias32(x: int) -> int:
    """Wellons' hash of one 32-bit word, as written: the reference the draws' tensor version must match."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_each_draw_is_the_hash_of_seed_epoch_row_and_call_however_many_draws_come_before_it() -> None:
    rows = torch.tensor([0, 7, 4095])
    draws = KeyedDraws(3, 5, rows, torch.device("cpu"))
    words = [draws._words(per_image) for per_image in [1] * 20 + [3] + [1] * 20]  # past a block of one-word calls
    for call, word in enumerate(words, start=1):
        for image, row in enumerate(rows.tolist()):
            key = lowbias32(lowbias32(lowbias32(lowbias32(3) ^ 5) ^ row) ^ call)
            expected = [lowbias32((lowbias32(key ^ counter) + call) & 0xFFFFFFFF) for counter in range(word.shape[1])]
            assert word[image].tolist() == expected


def test_noise_turned_off_leaves_every_other_draw_of_a_view_as_it_was() -> None:
    images = 0.5 + 0.5 * torch.rand(16, 1, 8, 8)  # only an erased pixel is 0, noise or not
    erase_all = TransformParams(cutout_probability=1.0, cutout_size=3)
    noisy = erase_all.model_copy(update={"noise_std": 0.01})
    keyed = [view_batch(images, params, KeyedDraws(0, 1, torch.arange(16), torch.device("cpu")))
             for params in (erase_all, noisy)]
    streamed = [augment_batch(images, params, torch.Generator().manual_seed(2)) for params in (erase_all, noisy)]
    for without, with_noise in (keyed, streamed):
        assert not torch.equal(without, with_noise)
        assert torch.equal(without == 0, with_noise == 0)  # the same squares erased


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2))
    return padded[:, 2 - dy : 10 - dy, 2 - dx : 10 - dx]


def test_mixed_views_of_a_transfer_set_mixed_already_are_refused() -> None:
    train = image_set()
    train.columns["mix_label"] = train.labels
    with pytest.raises(ParamsError, match=re.escape("views.mix: the transfer set is mixed already (augment.mix)")):
        views_of(train, MIXED)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_views_are_the_same_on_cuda_as_on_the_cpu() -> None:
    images = torch.rand(16, 3, 8, 8)
    rows = torch.arange(16)
    cpu = view_batch(images, MIXED, KeyedDraws(0, 2, rows, torch.device("cpu")))
    cuda = view_batch(images.cuda(), MIXED, KeyedDraws(0, 2, rows, torch.device("cuda")))
    assert (cpu - cuda.cpu()).abs().max() < 1e-5


def test_a_student_on_fresh_views_needs_its_teacher_live() -> None:
    with pytest.raises(ParamsError, match=re.escape("distill.student_kd.teacher: stored, but the student trains on "
                                                    "fresh views (views)")):
        load_params(SHIPPED_PARAMS, {"distill.student_kd.views": {"pad_crop": 1},
                                     "distill.student_kd.teacher": "stored"})
    live = load_params(SHIPPED_PARAMS, {"distill.student_kd.views": {"pad_crop": 1}})  # the shipped teacher: live
    assert live.student_training("student_kd").views == TransformParams(pad_crop=1)
    stored = load_params(SHIPPED_PARAMS, {"distill.student_kd.views": {}, "distill.student_kd.teacher": "stored"})
    assert not stored.student_training("student_kd").views.enabled  # {}: the stored images, whatever the student's


def live_teacher(tmp_path) -> Teacher:
    from pipelines.engine.checkpoint import save_checkpoint
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "teacher.pt", build_model(CONFIG).state_dict(), CONFIG, {})
    return Teacher(tmp_path / "teacher.pt", tmp_path / "features", run_live=True)


def test_a_live_teacher_on_a_fresh_view_gives_the_loss_of_stored_logits_of_that_view(tmp_path) -> None:
    train = image_set()
    teacher = live_teacher(tmp_path)
    student = build_model(CONFIG)
    live = KD(teacher, temperature=4.0)
    live.setup(student, train)
    assert teacher.model is not None
    batch = views_of(train, MIXED).of_epoch(2)(torch.tensor([4, 11, 2, 19]))
    logits = student(batch.images)
    # The same view's logits, as a cache of that epoch's views would store them, row by row.
    stored = torch.zeros(len(train), 4)
    stored[batch.rows] = teacher.model.module(batch.images).detach()
    cached = KD(stored, temperature=4.0)
    assert torch.allclose(live(logits, batch), cached(logits, batch), atol=1e-6)


def training(epochs: int = 2) -> TrainingParams:
    return TrainingParams(model=ModelParams(width=4, depth=2, dropout=0.0),
                          train=TrainParams(epochs=epochs, batch_size=8),
                          optimizer=SGDParams(name="sgd", lr=0.05, momentum=0.9),
                          schedule=ConstantSchedule(name="constant"),
                          regularization=RegularizationParams(weight_decay=0.0, weight_decay_mode="coupled"),
                          views=MIXED)


def test_function_matching_needs_no_labels(tmp_path) -> None:
    # A student matching the live teacher on mixed views, with no label term, learns the same whatever the labels.
    train = image_set()
    weights = []
    for labels in (train.labels, torch.flip(train.labels, [0])):
        torch.manual_seed(0)
        student = build_model(CONFIG)
        objective = Distillation([("kd", 1.0, KD(live_teacher(tmp_path), temperature=1.0))])
        data = ImageSet(train.images, labels, train.class_names)
        weights.append(fit(student, data, data, objective, training(), CPU, seed=0).state_dict)
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_kd_reads_the_stored_logits_by_row_and_the_live_teacher_by_image(tmp_path) -> None:
    teacher = live_teacher(tmp_path)
    term = KD(teacher, temperature=2.0)
    assert isinstance(term, TeacherLogits) and term.live_models() == []  # loaded by its set-up
    term.setup(build_model(CONFIG), image_set())
    assert term.live_models() == [teacher.model]
    batch = Batch(images=torch.rand(3, 1, 8, 8), labels=torch.zeros(3, dtype=torch.long), rows=torch.tensor([0, 0, 0]))
    got = term.teacher(torch.zeros(3, 4), batch)
    assert teacher.model is not None and torch.equal(got, teacher.model.module(batch.images))
