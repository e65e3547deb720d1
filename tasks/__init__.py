"""Prefect tasks, one per pipeline stage, plus the flow's bookkeeping (params overrides, published report).

Importing this package sets quiet, offline defaults before Prefect loads (a variable already set wins):
no telemetry, Prefect's state in the project's .prefect/, no DVC analytics daemon.
"""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("PREFECT_HOME", str(PROJECT_ROOT / ".prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
