#!/usr/bin/env bash
# HEALTHCHECK: a worker's own health endpoint (prefect worker start --with-healthcheck); other modes are
# one-shot runs with nothing to probe.
set -euo pipefail
if [[ -e /tmp/worker-mode ]]; then
  exec python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=5)"
fi
