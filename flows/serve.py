"""`make serve`: the pipeline deployment of prefect.yaml served from this checkout, schedule included, in one
process: for a single machine, with no work pool or worker. Its parameters, tags, schedule and concurrency
are prefect.yaml's (one source), with the environment's DISTILL_* values as `make deploy` reads them; the
code is this checkout's, not a fresh clone.

    make serve                                  # schedule as DISTILL_CRON says, off unless DISTILL_SCHEDULE_ACTIVE=true
    prefect deployment run scheduled-distillation/pipeline   # a run now, from another shell
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

PREFECT_FILE = Path(__file__).resolve().parents[1] / "prefect.yaml"


def deployment_spec(name: str = "pipeline") -> dict[str, Any]:
    """The deployment `name` of prefect.yaml with its {{ $VAR }} values taken from the environment, as
    `prefect deploy` takes them."""
    from prefect.utilities.templating import apply_values

    spec = next(item for item in yaml.safe_load(PREFECT_FILE.read_text())["deployments"] if item["name"] == name)
    values = apply_values(spec, {}, remove_notset=False)
    assert isinstance(values, dict)  # NotSet only replaces a placeholder standing alone, never a whole mapping
    return values


def main() -> None:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.schedules import Cron

    from flows.scheduled import scheduled_distillation

    spec = deployment_spec()
    unset = sorted(set(re.findall(r"\{\{ \$(\w+) \}\}", json.dumps(spec["schedules"]))))
    if unset:
        raise SystemExit(f"{PREFECT_FILE.name}: set {', '.join(unset)} (make serve sets defaults)")
    schedules = [Cron(item["cron"], timezone=item.get("timezone"), active=str(item.get("active")).lower() == "true")
                 for item in spec.get("schedules") or []]
    limit = spec["concurrency_limit"]
    scheduled_distillation.serve(
        name=spec["name"], description=spec["description"], parameters=spec["parameters"], tags=spec["tags"],
        schedules=schedules,
        global_limit=ConcurrencyLimitConfig(limit=limit["limit"], collision_strategy=limit["collision_strategy"]),
    )


if __name__ == "__main__":
    main()
