"""The container image: the Dockerfile lints clean and installs from the same pins as `make` and CI, the
build context leaves data, models, caches and history out, the entrypoint's modes, and (slow) a real build
on a Debian base with podman, then the pipeline's smallest run inside the image as its non-root user."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, TINY_OVERRIDES

DOCKERFILE = (PROJECT_ROOT / "Dockerfile").read_text()
MAKEFILE = (PROJECT_ROOT / "Makefile").read_text()
BIN = Path(sys.executable).parent


@pytest.mark.integration
def test_the_dockerfile_and_its_scripts_lint_clean() -> None:
    hadolint = subprocess.run([str(BIN / "hadolint"), "Dockerfile"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert hadolint.returncode == 0, hadolint.stdout + hadolint.stderr
    scripts = sorted(str(path) for path in (PROJECT_ROOT / "docker").glob("*.sh"))
    shellcheck = subprocess.run([str(BIN / "shellcheck"), *scripts], capture_output=True, text=True)
    assert shellcheck.returncode == 0, shellcheck.stdout


def test_the_image_installs_from_the_lock_file_and_pins_that_ci_uses() -> None:
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)  # CI installs through `make setup`...
    setup = MAKEFILE.split("$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    assert "-r requirements.lock" in setup  # ...from the lock file
    assert "COPY requirements.lock /opt/requirements.lock" in DOCKERFILE
    assert "-r /opt/requirements.lock" in DOCKERFILE
    for pin in ("TORCH_VERSION", "UV_VERSION"):  # torch and uv, installed before the lock, pinned alike
        made = re.search(rf"^{pin} \?= (\S+)$", MAKEFILE, re.M).group(1)
        imaged = re.search(rf"^ARG {pin}=(\S+)$", DOCKERFILE, re.M).group(1)
        assert made == imaged, f"{pin}: Makefile {made}, Dockerfile {imaged}"
    assert DOCKERFILE.index("COPY requirements.lock") < DOCKERFILE.index("COPY --chown")  # code last, for caching


def test_the_build_context_leaves_out_history_data_models_caches_and_environments() -> None:
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    for pattern in (".git", ".venv", ".dvc/cache", ".prefect", ".cache", ".resume", "data/*", "models/*", "kd_study"):
        assert pattern in ignored, pattern
    assert re.search(r"^USER 1000:1000$", DOCKERFILE, re.M) and "HEALTHCHECK" in DOCKERFILE


@pytest.mark.integration
@pytest.mark.parametrize(("mode", "message"), [("stage", "stage: name a stage"),
                                               ("worker", "worker: name the work pool")])
def test_an_entrypoint_mode_missing_its_argument_says_what_to_give(mode: str, message: str) -> None:
    result = subprocess.run([str(PROJECT_ROOT / "docker" / "entrypoint.sh"), mode], cwd=PROJECT_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr


@pytest.mark.integration
def test_the_entrypoint_runs_a_stage_with_this_python() -> None:
    env = dict(os.environ, PATH=os.pathsep.join([str(BIN), os.environ["PATH"]]))
    result = subprocess.run([str(PROJECT_ROOT / "docker" / "entrypoint.sh"), "stage", "prepare", "--help"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "prepare" in result.stdout


def pip_setting(name: str) -> str | None:
    """A pip setting of this machine (its CA bundle, its local wheel folder), from the environment or pip's config."""
    if value := os.environ.get(f"PIP_{name.upper().replace('-', '_')}"):
        return value
    result = subprocess.run([sys.executable, "-m", "pip", "config", "get", f"global.{name}"], capture_output=True,
                            text=True)
    return result.stdout.strip() or None


@pytest.mark.slow
def test_the_image_builds_on_a_debian_base_and_runs_the_pipeline_as_its_user(tmp_path: Path) -> None:
    tools = [tool for tool in ("podman", "buildah", "debootstrap") if not shutil.which(tool)]
    if tools:
        if os.environ.get("CI"):
            pytest.fail(f"{', '.join(tools)} missing: .ci/run runs `make image-tools` first")
        pytest.skip(f"{', '.join(tools)} missing: `make image-tools` installs them (as root)")
    tag = f"distill-test-{uuid.uuid4().hex[:8]}"
    base, image = f"localhost/{tag}-base", f"localhost/{tag}"
    rootfs = tmp_path / "rootfs"
    subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs)], check=True, capture_output=True)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["podman", "import", "-", base], stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()
    # This machine's CA bundle and local wheel folder, mounted for the build only (never copied into the image).
    # Docker's image format: OCI's has no SHELL or HEALTHCHECK.
    build = ["podman", "build", "--isolation", "chroot", "--format", "docker", "--build-arg", f"BASE_IMAGE={base}",
             "-t", image]
    if cert := pip_setting("cert"):
        build += ["-v", f"{cert}:/run/host-ca.pem:ro", "--build-arg", "PIP_CERT=/run/host-ca.pem",
                  "--build-arg", "SSL_CERT_FILE=/run/host-ca.pem"]
    if wheels := pip_setting("find-links"):
        build += ["-v", f"{wheels}:/run/wheels:ro", "--build-arg", "PIP_FIND_LINKS=/run/wheels"]
    container = None
    try:
        built = subprocess.run([*build, str(PROJECT_ROOT)], capture_output=True, text=True)
        assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
        container = subprocess.run(["buildah", "from", image], check=True, capture_output=True,
                                   text=True).stdout.strip()

        def inside(*command: str) -> subprocess.CompletedProcess:
            return subprocess.run(["buildah", "run", "--isolation", "chroot", container, "--", *command],
                                  capture_output=True, text=True)

        assert inside("id", "-un").stdout.strip() == "distill"
        # The build's mounts leave empty mount points behind, never their content.
        assert inside("bash", "-c", "! test -s /run/host-ca.pem && ! ls /run/wheels/*.whl").returncode == 0
        assert "healthcheck" in subprocess.run(["podman", "inspect", image], capture_output=True,
                                               text=True).stdout.lower()
        overrides = [f"--set={key}={value}" for key, value in TINY_OVERRIDES.items()]
        run = inside("/workspace/docker/entrypoint.sh", "flow", *overrides)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        assert "student_kd" in run.stdout and "| teacher |" in run.stdout  # the report, printed at the end
        assert inside("test", "-s", "/workspace/models/student_kd.pt").returncode == 0
    finally:
        if container:
            subprocess.run(["buildah", "rm", container], capture_output=True)
        subprocess.run(["podman", "rmi", "-f", image, base], capture_output=True)
