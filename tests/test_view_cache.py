"""The cache of the teacher's logits on fresh views (`teacher: cached`, stage teacher_views): the student replays
exactly the views that were labelled, by epoch and row; the size bound is checked before anything is written;
a cache of other views is refused, and DVC reruns the stage when what it is of changes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from pipelines.config import ParamsError, load_params
from pipelines.core.errors import DataError
from pipelines.core.paths import Paths
from pipelines.distill import distill
from pipelines.engine.batches import BatchSource
from pipelines.engine.checkpoint import save_checkpoint
from pipelines.engine.runtime import Runtime
from pipelines.engine.views import fresh_views
from pipelines.kd.kd import KD
from pipelines.kd.teacher import Teacher
from pipelines.kd.view_cache import CachedViews, view_key, write_view_cache
from pipelines.models import build_model
from pipelines.teacher_views import teacher_views
from tests.conftest import SHIPPED_PARAMS, TINY_OVERRIDES
from tests.test_views import CONFIG, MIXED, image_set

CPU = Runtime(torch.device("cpu"))


def cached(tmp_path: Path, top_k: int | None = None, epochs: int = 2):
    train = image_set()
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "teacher.pt", build_model(CONFIG).state_dict(), CONFIG, {})
    write_view_cache(tmp_path / "views", tmp_path / "teacher.pt", train, view_key(0, MIXED, epochs, len(train)), MIXED,
                     top_k, 2**30, CPU, batch_size=7)
    return train, CachedViews(tmp_path / "views", 0, MIXED, epochs)


def test_the_cached_logits_of_a_view_are_the_live_teacher_s_on_that_view(tmp_path: Path) -> None:
    train, cache = cached(tmp_path)
    student = build_model(CONFIG)
    cache.setup(student, train)
    live_teacher = Teacher(tmp_path / "teacher.pt", tmp_path / "features", run_live=True)
    live = KD(live_teacher, temperature=4.0)
    live.setup(student, train)
    replayed = KD(cache, temperature=4.0)
    batch = fresh_views(BatchSource(train, CPU), train, MIXED, 0, CPU).of_epoch(1)(torch.tensor([20, 3, 11]))
    assert batch.epoch == 1
    logits = student(batch.images)
    assert torch.allclose(replayed.teacher(logits, batch), live.teacher(logits, batch), atol=1e-5)
    assert torch.allclose(replayed(logits, batch), live(logits, batch), atol=1e-5)


def test_with_top_k_the_kept_classes_are_exact_and_the_others_below_them(tmp_path: Path) -> None:
    train, cache = cached(tmp_path, top_k=2)
    cache.setup(build_model(CONFIG), train)
    batch = fresh_views(BatchSource(train, CPU), train, MIXED, 0, CPU).of_epoch(0)(torch.arange(24))
    teacher = Teacher(tmp_path / "teacher.pt", tmp_path / "features", run_live=True)
    teacher.setup(build_model(CONFIG), train)
    exact, read = teacher.logits(batch, CPU.device), cache.logits(batch, CPU.device)
    top = exact.topk(2, dim=1)
    assert torch.allclose(read.gather(1, top.indices), top.values, atol=1e-5)
    assert (read.topk(2, dim=1).indices.sort().values == top.indices.sort().values).all()


def test_a_cache_larger_than_its_bound_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    train = image_set()
    with pytest.raises(ParamsError, match=re.escape("more than teacher_views.max_cache_gb")):
        write_view_cache(tmp_path / "views", tmp_path / "teacher.pt", train, view_key(0, MIXED, 45, len(train)),
                         MIXED, None, 1000.0, CPU)
    assert not (tmp_path / "views").exists()


@pytest.mark.parametrize("changed, student_side", [
    ("seed", lambda folder: CachedViews(folder, 1, MIXED, 2)),
    ("views", lambda folder: CachedViews(folder, 0, MIXED.model_copy(update={"pad_crop": 2}), 2)),
    ("epochs", lambda folder: CachedViews(folder, 0, MIXED, 3)),
])
def test_a_cache_of_other_views_is_refused_naming_what_changed(tmp_path: Path, changed: str, student_side) -> None:
    train, _ = cached(tmp_path)
    with pytest.raises(DataError, match=re.escape(f"the cached logits are of other views ({changed} changed since); "
                                                  f"rerun `dvc repro teacher_views`")):
        student_side(tmp_path / "views").setup(build_model(CONFIG), train)


def test_dvc_reruns_the_cache_when_the_teacher_the_data_the_views_or_the_seed_change() -> None:
    from tests.test_dvc_pipeline import resolved_stages

    stage = resolved_stages()["teacher_views@student_kd"]
    deps = {str(dep) for dep in stage.deps}
    assert {"models/teacher.pt", "data/transfer/transfer.parquet"} <= deps
    params = {key for dep in stage.deps if hasattr(dep, "params") for key in (dep.params or [])}
    assert {"seed", "student", "distill.student_kd", "teacher_views"} <= params  # the views, the epochs, the bound


def test_a_student_with_a_cached_teacher_trains_on_the_replayed_views(trained_pipeline, tmp_path: Path) -> None:
    _, shared = trained_pipeline
    paths = Paths(tmp_path / "root")
    shutil.copytree(shared.root, paths.root)
    params = load_params(SHIPPED_PARAMS, {**TINY_OVERRIDES, "distill.student_kd.teacher": "cached",
                                          "distill.student_kd.views": MIXED.model_dump(mode="json")})
    manifest = teacher_views(params, paths, "student_kd")["student_kd"]
    assert manifest["epochs"] == 1 and manifest["top_k"] == 10
    metrics = distill(params, paths, "student_kd")["student_kd"]
    assert metrics["epochs"] == 1 and 0.0 <= metrics["val_accuracy"] <= 1.0

    reseeded = load_params(SHIPPED_PARAMS, {**TINY_OVERRIDES, "seed": 1, "distill.student_kd.teacher": "cached",
                                            "distill.student_kd.views": MIXED.model_dump(mode="json")})
    with pytest.raises(DataError, match=re.escape("seed changed since")):
        distill(reseeded, paths, "student_kd")
