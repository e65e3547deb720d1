#!/usr/bin/env bash
# The image's modes, run in /workspace (the image's copy of the project, or a checkout mounted there):
#   flow [--set KEY=VALUE ...]   the Prefect flow over every stage (python -m flows.distillation)
#   scheduled [ARGS]             the run a deployment makes: pull, run, push, record (python -m flows.scheduled)
#   repro [ARGS]                 dvc repro
#   stage NAME [ARGS]            one stage, under the launcher (torchrun when params ask for several processes)
#   worker POOL                  a Prefect process worker polling POOL, one flow run at a time, /health on :8080
#   shell                        bash
# Anything else runs as given.
set -euo pipefail

mode="${1:-flow}"
shift || true
case "$mode" in
  flow) exec python -m flows.distillation "$@" ;;
  scheduled) exec python -m flows.scheduled "$@" ;;
  repro) exec dvc repro "$@" ;;
  stage)
    if [[ $# -lt 1 ]]; then
      echo "stage: name a stage of pipelines/, e.g. stage train_teacher" >&2
      exit 2
    fi
    name="$1"
    shift
    exec python -m "pipelines.${name}" "$@" ;;
  worker)
    if [[ $# -lt 1 ]]; then
      echo "worker: name the work pool, e.g. worker gpu-process" >&2
      exit 2
    fi
    pool="$1"
    shift
    touch /tmp/worker-mode
    exec prefect worker start --pool "$pool" --type process --limit 1 --with-healthcheck "$@" ;;
  shell) exec bash "$@" ;;
  *) exec "$mode" "$@" ;;
esac
