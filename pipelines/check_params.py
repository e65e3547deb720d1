"""Stage `check_params`: the whole params.yaml checked before any other stage runs.

Each stage depends only on the keys it reads, so a key none of them reads (a misspelt section, one left
from an older version) would otherwise pass `dvc repro` unseen. This stage depends on every key of the file
(dvc.yaml: `params.yaml:` with no keys); every other stage depends on the file it writes, whose content never
changes. So whenever params.yaml changed, `dvc repro` runs this stage first and stops there (exit 2, each
problem named) if the file is invalid; while it is valid, the stages after it see an unchanged dependency and
rerun only for the keys they read themselves.
"""

from __future__ import annotations

from pipelines.config import Params
from pipelines.core.atomic import write_text
from pipelines.core.paths import Paths
from pipelines.core.stage import run_stage

CHECKED = ("params.yaml passed `python -m pipelines.check_params`. Every other stage depends on this file, "
           "which stays the same while params.yaml stays valid.\n")


def check_params(params: Params, paths: Paths = Paths()) -> None:
    """Check the whole parameters file: every key (the stage runner did, before calling this) and each
    distillation method's options; on success write reports/params_check.txt."""
    from pipelines.kd import check_students  # (imports torch: the methods' options live beside their code)

    check_students(params)
    write_text(paths.params_check, CHECKED)


if __name__ == "__main__":
    run_stage(check_params)
