"""Quiet, offline defaults for a run of the pipeline's flows: no telemetry, Prefect's state inside the
project, no DVC analytics, and time for the local Prefect server to start on a loaded machine (Prefect's
20 s is short where the stages' processes share two cores). A variable already set in the environment wins.

Nothing is set on import: a flow's entry point calls `quiet_offline()` around its run, and a process
that sets the variables before Prefect is imported (the Makefile, the tests) uses DEFAULTS."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DEFAULTS = {
    "PREFECT_HOME": str(PROJECT_ROOT / ".prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def quiet_offline() -> AbstractContextManager:
    """Prefect settings with the defaults the environment does not set (Prefect read its settings when it
    was imported, so they apply through its temporary_settings; the local server it starts inherits them),
    and DVC_NO_ANALYTICS for the dvc processes the flow starts."""
    from prefect.settings import (PREFECT_HOME, PREFECT_SERVER_ANALYTICS_ENABLED,
                                  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings)

    os.environ.setdefault("DVC_NO_ANALYTICS", DEFAULTS["DVC_NO_ANALYTICS"])
    settings = {PREFECT_HOME: DEFAULTS["PREFECT_HOME"], PREFECT_SERVER_ANALYTICS_ENABLED: False,
                PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 90}
    return temporary_settings(updates={setting: value for setting, value in settings.items()
                                       if setting.name not in os.environ})
