# The pipeline's image for GPU nodes (docs/containers.md). Versions come from the files `make setup` and CI
# install from: torch's pin (TORCH_VERSION, the Makefile's) and requirements.lock.
#
#   docker build -t distill-pipeline .
#   docker run --gpus all --ipc=host distill-pipeline flow        # modes: docker/entrypoint.sh
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

# torch (and uv) first and on their own, pinned as in the Makefile: PyPI's Linux build of this version is the CUDA one. Build
# arguments only for a build behind a private index or proxy, never stored in the image's environment:
# PIP_CERT / SSL_CERT_FILE (a CA bundle mounted at build time) and PIP_FIND_LINKS (a mounted wheel folder).
ARG TORCH_VERSION=2.13.0
ARG UV_VERSION=0.13.9
ARG PIP_CERT=
ARG SSL_CERT_FILE=
ARG PIP_FIND_LINKS=

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PREFECT_HOME=/home/distill/.prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DVC_NO_ANALYTICS=1

# Python, git (DVC and the deployments' pull steps), make; ca-certificates for HTTPS remotes. Not pinned:
# their versions are the base image's distribution's, which BASE_IMAGE chooses.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv git make ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 --shell /bin/bash distill

# Dependencies before the code, so a code change rebuilds only the last layers.
COPY requirements.lock /opt/requirements.lock
RUN python3 -m venv /opt/venv \
    && pip install --no-compile "torch==${TORCH_VERSION}" "uv==${UV_VERSION}" \
    && uv pip install --python /opt/venv/bin/python --compile-bytecode --quiet -r /opt/requirements.lock

# The project last, as a git repository of its own (DVC and its experiments need one; .git stays out of
# the build context). Mount a checkout over /workspace to run on that instead.
WORKDIR /workspace
COPY --chown=distill:distill . /workspace
USER 1000:1000
RUN git init -q -b main \
    && git add -A \
    && git -c user.name=distill -c user.email=distill@localhost commit -qm "the image's copy of the project"

# A worker (mode `worker`) answers on :8080/health; other modes have nothing to probe and count as healthy.
HEALTHCHECK --interval=60s --timeout=10s --start-period=60s CMD ["/workspace/docker/healthcheck.sh"]
ENTRYPOINT ["/workspace/docker/entrypoint.sh"]
CMD ["flow"]
