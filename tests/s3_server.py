"""A real S3 API on loopback for the tests: moto's standalone server, run as its own process.

Fixtures (registered for every test by tests/conftest.py):

- ``s3_server`` (session): an :class:`S3Server` with ``endpoint_url``, ``access_key``, ``secret_key``,
  ``region``, ``env`` (the standard variables that boto3, pyarrow and DVC's S3 remote read),
  ``client()`` (a boto3 S3 client) and ``make_bucket()`` (a new, uniquely named, empty bucket).
  Pass ``env`` to a subprocess (``dict(os.environ, **s3_server.env)``).
- ``s3_env`` (function): the same variables set in this process (monkeypatch), for in-process code;
  returns the server.

The server is a plain HTTP server on 127.0.0.1 at a free port. It is stopped at the end of the session,
and it also exits by itself if the pytest process that started it dies (killed, crashed), so no server
outlives its test run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0

# Runs moto's server (moto.server.main, what `python -m moto.server` and `moto_server` run) in a child
# process, plus a watchdog thread that ends it as soon as its parent (pytest) is gone, whatever killed it.
_LAUNCHER = """
import os, sys, threading, time
parent = os.getppid()
def watchdog():
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(0.5)
threading.Thread(target=watchdog, daemon=True).start()
from moto.server import main
main(sys.argv[1:])
"""


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self, **kwargs: Any):
        """A boto3 S3 client for this server (explicit endpoint and credentials; no environment needed)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            **kwargs,
        )

    def make_bucket(self, prefix: str = "test") -> str:
        """Create a new, empty bucket with a unique name (``<prefix>-<12 hex>``) and return its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def _start(log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start the server on a free port and wait until it answers; retry if the port was taken meanwhile."""
    env = dict(os.environ)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MOTO_PORT"):
        env.pop(name, None)
    last_error = ""
    for _attempt in range(3):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    break  # exited: most likely the port was taken between _free_port and bind
                if _answers(url + "/"):
                    return process, url
                time.sleep(0.1)
        except BaseException:
            _stop(process)
            raise
        _stop(process)
        last_error = f"exit code {process.returncode}" if process.returncode is not None else "no answer"
    log_tail = log_path.read_text(errors="replace")[-4000:]
    raise RuntimeError(f"moto S3 server did not start ({last_error}); its log:\n{log_tail}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (moto) on 127.0.0.1 for the whole session (its log: moto-s3*/server.log)."""
    process, url = _start(tmp_path_factory.mktemp("moto-s3") / "server.log")
    try:
        yield S3Server(endpoint_url=url)
    finally:
        _stop(process)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """``s3_server.env`` set in this process for one test (boto3, pyarrow, s3fs and DVC read it)."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server
