"""The shared entry point of `python -m pipelines.<stage>`: validate params first, then run the stage.

Stage modules import only this runner and the config at the top and the rest (torch, the data and training
code) inside the stage function, so `--help` and a params error answer at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.config import PARAMS_FILE, Params, ParamsError, load_params
from pipelines.config.distributed import DistributedParams
from pipelines.core.errors import DataError
from pipelines.core.launch import end_with_agent, launch_workers, needs_workers, under_torchrun
from pipelines.core.paths import Paths

EXIT_BAD_PARAMS = 2
EXIT_BAD_DATA = 1


def run_stage(
    stage: Callable[..., Any],
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    distributed: Callable[[Params, dict[str, Any]], DistributedParams] | None = None,
) -> None:
    """Run one stage from the command line: `stage(params, paths, **options)`, where options are the
    arguments `add_arguments` declares. Invalid params exit 2 before anything is read or written. A training
    stage gives `distributed`, which says from the params and options how its model runs: under torchrun
    when that asks for several processes (pipelines/core/launch.py)."""
    parser = argparse.ArgumentParser(description=stage.__doc__)
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="parameters file (default: params.yaml)")
    parser.add_argument("--root", type=Path, default=Path("."), help="project folder holding data/, models/, ...")
    if add_arguments is not None:
        add_arguments(parser)
    options = vars(parser.parse_args())
    params_file, root = options.pop("params"), options.pop("root")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    params = params_or_exit(params_file)
    if distributed is not None and needs_workers(settings := exit_on_user_error(distributed, params, options)):
        exit_on_user_error(launch_workers, settings, params.device)  # the workers run this command under torchrun
        return
    if not under_torchrun():
        exit_on_user_error(stage, params, Paths(root), **options)
        return
    from torch.distributed.elastic.multiprocessing.errors import record

    end_with_agent()
    # A bug's traceback reaches torchrun's report of the failed rank; a user's error is its message alone.
    record(exit_on_user_error)(stage, params, Paths(root), **options)
    leave_now()


def exit_on_user_error(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)`; on an error the user can act on, its message alone on stderr and exit 2
    (params: a method's options, too few micro-batches for the processes) or 1 (data, a checkpoint)."""
    try:
        return function(*args, **kwargs)
    except (ParamsError, DataError) as error:  # DataError: the user's data, not a bug; the message says what to fix
        print(error, file=sys.stderr)
        code = EXIT_BAD_PARAMS if isinstance(error, ParamsError) else EXIT_BAD_DATA
        if under_torchrun():
            leave_now(code)  # its process group may still be up, which the interpreter's teardown can abort on
        sys.exit(code)


def leave_now(code: int = 0) -> None:
    """End a torchrun worker with exit code `code` without the interpreter's teardown. After FSDP, DTensor's
    caches keep the device mesh, and so gloo's threads, alive past destroy_process_group; their C++
    destructors at interpreter exit then abort the process now and then ("terminate called without an
    active exception", exit -6, on torch 2.13), failing a stage whose outputs are written."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def params_or_exit(path: Path, overrides: dict[str, Any] | None = None) -> Params:
    """The validated params of a command line; if invalid, the problems on stderr and exit code 2."""
    try:
        return load_params(path, overrides)
    except ParamsError as error:
        print(error, file=sys.stderr)
        sys.exit(EXIT_BAD_PARAMS)
