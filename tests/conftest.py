"""Shared fixtures: tiny params for fast stage runs, and throwaway copies of the project for DVC and Prefect."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tasks.environment import DEFAULTS

# How long a Prefect server may take to start in the tests: the session's (prefect_server), test_deployments' own,
# and the temporary ones of the flows the tests run as commands. On a busy machine (two test workers, a training
# run beside them) a start can take minutes, well past Prefect's defaults (20 s, 30 s for its test harness).
PREFECT_STARTUP_TIMEOUT_S = 300

# Quiet, offline Prefect and DVC for every test, set before anything imports Prefect (a variable already set wins).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(PREFECT_STARTUP_TIMEOUT_S))
for _name, _value in DEFAULTS.items():
    os.environ.setdefault(_name, _value)

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pipelines.config import Params, load_params  # noqa: E402
from pipelines.config.data import DataParams  # noqa: E402
from pipelines.data.images import ImageSet, pixels_from_lists  # noqa: E402
from pipelines.data.sources import load_source  # noqa: E402

# s3_server, s3_env: moto's S3 API on loopback; swift_server: OpenStack Swift's (a real object store)
pytest_plugins = ["tests.s3_server", "tests.swift_server"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _shipped_params() -> Path:
    """A copy of params.yaml as committed (git's HEAD): the tests run on the shipped defaults, whatever the
    working file holds (a user's own data.source, or what a failed `dvc exp run` left). Outside a git
    checkout, the file itself."""
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    path = Path(tempfile.mkdtemp(prefix="shipped-params-")) / "params.yaml"
    path.write_text(committed.stdout if committed.returncode == 0 else (PROJECT_ROOT / "params.yaml").read_text())
    return path


SHIPPED_PARAMS = _shipped_params()

# Overrides that shrink the real params.yaml to a run of a few seconds: one augmented copy,
# narrow models, one epoch. Everything else (data source, split, schedules) is the shipped file.
TINY_OVERRIDES: dict[str, Any] = {
    "augment.copies": 1,
    "teacher.model.width": 4,
    "teacher.model.depth": 2,
    "teacher.train.epochs": 1,
    "student.model.width": 2,
    "student.model.depth": 1,
    "student.train.epochs": 1,
    "distill.student_kd.train.epochs": 1,  # the shipped student_kd trains longer than the baseline
    "study.epochs": 1,  # the optimization study's settings have a budget of their own
    "evaluate.latency_repeats": 2,
}

# The distilled student of the fixed transfer set: Hinton's loss on the teacher's stored logits, no fresh views
# (the shipped student_kd runs its teacher live on the student section's mixed views).
STORED_KD: dict[str, Any] = {
    "student.views": None,
    "distill.student_kd.teacher": "stored",
    "distill.student_kd.losses": [{"method": "kd", "weight": 0.9, "temperature": 8.0}, {"method": "ce", "weight": 0.1}],
}

# What a copy of the project needs to run the pipeline: code, stage and params definitions, DVC's config.
PROJECT_FILES = (
    "pipelines", "tasks", "flows", "dvc.yaml", "Makefile", "data/raw", "models/.gitignore",
    ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore",
)


def read_image_set(path: Path) -> ImageSet:
    """A Parquet image file of the pipeline, whole in memory as tensors (test files are small)."""
    table = pq.read_table(path)
    metadata = table.schema.metadata
    columns = {
        name: torch.from_numpy(table.column(name).to_numpy().copy())
        for name in table.column_names
        if name not in ("image", "shape", "label")
    }
    return ImageSet(
        images=pixels_from_lists(table.column("image"), json.loads(metadata[b"image_shape"])),
        labels=torch.from_numpy(table.column("label").to_numpy().copy()),
        class_names=json.loads(metadata[b"class_names"]),
        columns=columns,
    )


def read_source(data: DataParams, batch_size: int = 7) -> ImageSet:
    """Every image of `data.source`, read batch by batch (an odd batch size, so batches cross class borders)."""
    source = load_source(data)
    images = torch.from_numpy(np.concatenate(list(source.batches(batch_size))))
    assert images.shape[1:] == source.image_shape
    return ImageSet(images, torch.from_numpy(source.labels), source.class_names)


def checksum(data: ImageSet) -> str:
    """The card's sha256 of a split: all pixels, then all labels."""
    digest = hashlib.sha256(data.images.contiguous().numpy().tobytes())
    digest.update(data.labels.numpy().astype("<i8").tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def prefect_server():
    """A real, temporary Prefect server (with its own database) for the flow runs of the whole session: every
    test that runs a flow or task in this process takes it, so none starts a temporary server of its own (under
    pytest-xdist, one per worker)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=PREFECT_STARTUP_TIMEOUT_S):
        yield


@pytest.fixture(params=["s3_server", pytest.param("swift_server", marks=pytest.mark.swift)])
def object_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Each S3 server in turn, moto's then Swift's, its endpoint and credentials in this process's environment
    (as a user's would be): a test taking it runs against both."""
    server = request.getfixturevalue(request.param)
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    return server


@pytest.fixture
def tiny_params() -> Params:
    return load_params(SHIPPED_PARAMS, TINY_OVERRIDES)


def run(command: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's venv first on PATH (dvc.yaml calls `python`)."""
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def local_rank_1(pgrep: list[str]) -> int:
    """The torchrun worker of local rank 1 among the processes `pgrep [ARGS]` finds, by its LOCAL_RANK (pids
    wrap around, so the last started is not always the largest)."""
    def local_rank(pid: str) -> bytes | None:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except FileNotFoundError:  # ended since
            return None
        return next((entry[len(b"LOCAL_RANK="):] for entry in environ if entry.startswith(b"LOCAL_RANK=")), None)

    def parent(pid: str) -> str:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]

    found = subprocess.run(["pgrep", *pgrep], capture_output=True, text=True).stdout.split()
    [worker] = [pid for pid in found if local_rank(pid) == b"1" and local_rank(parent(pid)) is None]  # not a fork
    return int(worker)


def copy_project(root: Path, names: tuple[str, ...]) -> None:
    """Copy these files and folders of the project into `root` (no bytecode), with the shipped params.yaml."""
    for name in names:
        source, target = PROJECT_ROOT / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    shutil.copy2(SHIPPED_PARAMS, root / "params.yaml")


def make_project(root: Path) -> Path:
    """A fresh clone-like copy of the project in `root` (git repo with one commit, DVC initialised), tiny params."""
    root.mkdir(parents=True)
    copy_project(root, PROJECT_FILES)
    from tasks.params import write_overrides

    write_overrides(root / "params.yaml", TINY_OVERRIDES)
    run(["git", "init", "-q"], root)
    # An identity of the copy's own: `dvc exp run` commits experiment refs, and CI may have no global one.
    run(["git", "config", "user.name", "test"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "project copy"], root)
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh clone-like copy of the project (git repo with one commit, DVC initialised), tiny params."""
    return make_project(tmp_path / "project")


@pytest.fixture(scope="session")
def first_repro(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One `dvc repro` of a fresh project copy: its root and what it printed, shared by the tests that start
    from a reproduced pipeline (treat it as read-only)."""
    root = make_project(tmp_path_factory.mktemp("reproduced") / "project")
    return root, run(["dvc", "repro"], root).stdout


@pytest.fixture(scope="session")
def reproduced_template(first_repro: tuple[Path, str]) -> Path:
    return first_repro[0]


@pytest.fixture
def reproduced_project(reproduced_template: Path, tmp_path: Path) -> Path:
    """A project copy after `dvc repro` (every output, dvc.lock and the DVC cache), of this test's own: what
    the `project` fixture gives after a full run, without running the pipeline again."""
    root = tmp_path / "project"
    shutil.copytree(reproduced_template, root, symlinks=True)
    return root


@pytest.fixture(scope="session")
def trained_pipeline(tmp_path_factory: pytest.TempPathFactory):
    """(params, paths) of one tiny run of prepare, augment, train_teacher, train_student, teacher_logits and distill.

    Run once per session into a throwaway root and shared by every test that reads trained artifacts:
    treat it as read-only (copy what a test changes into its own tmp_path).
    """
    from pipelines.augment import augment
    from pipelines.distill import distill
    from pipelines.core.paths import Paths
    from pipelines.prepare import prepare
    from pipelines.teacher_logits import teacher_logits
    from pipelines.train_student import train_student
    from pipelines.train_teacher import train_teacher

    params = load_params(SHIPPED_PARAMS, TINY_OVERRIDES)
    paths = Paths(tmp_path_factory.mktemp("trained_pipeline"))
    for stage in (prepare, augment, train_teacher, train_student, teacher_logits, distill):
        stage(params, paths)
    return params, paths
