"""Make params' `storage.dvc_remote` DVC's default remote, with the `storage` section's S3 settings (`make remote`).

    python -m pipelines.remote          # then commit .dvc/config; `make pull` on a fresh clone restores everything

What every clone needs (the URL, endpoint, region, timeouts) goes into .dvc/config, which is committed; the
profile, which names one user's credentials, into .dvc/config.local, which git ignores. No credential is
ever written: DVC's S3 remote reads them from the environment (AWS_ACCESS_KEY_ID, ...) or the profile, and an
endpoint URL with a user name or password in it is refused (it would go into the committed file).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from pipelines.config import PARAMS_FILE, ParamsError
from pipelines.config.storage import StorageParams
from pipelines.core.errors import DataError
from pipelines.core.stage import exit_on_user_error, params_or_exit
from pipelines.storage.client import redact

REMOTE = "storage"


def remote_settings(storage: StorageParams) -> list[tuple[str, str | None, bool]]:
    """(DVC remote option, value or None to unset, local: kept out of the committed config) of each setting."""
    return [
        ("endpointurl", storage.endpoint_url, False),
        ("region", storage.region, False),
        ("connect_timeout", str(int(storage.connect_timeout_s)), False),
        ("read_timeout", str(int(storage.read_timeout_s)), False),
        ("profile", storage.profile, True),
    ]


def configure_remote(storage: StorageParams, root: Path = Path(".")) -> list[list[str]]:
    """Run the `dvc remote` commands that make `storage.dvc_remote` the default remote; return them."""
    if not storage.dvc_remote:
        raise ParamsError("storage.dvc_remote: not set; give the remote's URL, e.g. s3://my-bucket/distill")
    if storage.endpoint_url and redact(storage.endpoint_url) != storage.endpoint_url:
        raise ParamsError(f"storage.endpoint_url: {redact(storage.endpoint_url)} holds a user name or password, "
                          f"which would go into .dvc/config (committed): take it out of the URL; S3 credentials "
                          f"come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or storage.profile")
    dvc = [sys.executable, "-m", "dvc", "remote"]
    commands = [[*dvc, "add", "--default", "--force", REMOTE, storage.dvc_remote]]
    for option, value, local in remote_settings(storage):
        scope = ["--local"] if local else []
        commands.append([*dvc, "modify", *scope, REMOTE, option, value] if value is not None
                        else [*dvc, "modify", *scope, "--unset", REMOTE, option])
    for command in commands:
        result = subprocess.run(command, cwd=root, capture_output=True, text=True)
        if result.returncode != 0:
            raise DataError(f"{' '.join(command[2:])} failed: {redact(result.stderr.strip())}")
    return commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="parameters file (default: params.yaml)")
    parser.add_argument("--root", type=Path, default=Path("."), help="the project folder (default: .)")
    args = parser.parse_args()
    storage = params_or_exit(args.params).storage
    exit_on_user_error(configure_remote, storage, args.root)  # what params say: exit 2; a failed command: 1
    print(f"DVC remote {REMOTE!r} -> {storage.dvc_remote} (the default): commit .dvc/config; `dvc push` sends the "
          f"data and models there, `make pull` gets them back")
    if storage.addressing_style == "virtual" and storage.endpoint_url:
        print("note: DVC's S3 remote addresses a custom endpoint path-style; for virtual-hosted URLs add "
              "`s3 =\n    addressing_style = virtual` to your AWS profile (~/.aws/config)")


if __name__ == "__main__":
    main()
