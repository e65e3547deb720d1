"""OpenStack Swift with its S3 API on loopback for the tests: the real servers of Debian's packages.

Fixture:

- ``swift_server`` (session): a :class:`SwiftServer`, shaped like tests/s3_server.py's :class:`S3Server`
  (``endpoint_url``, ``access_key``, ``secret_key``, ``region``, ``env``, ``client()``, ``make_bucket()``),
  plus ``stop()`` and ``start()``: the proxy alone goes away and comes back on the same port with the data
  still there, for tests of an object store that disappears mid-upload.

deploy/swift/start.sh runs the account, container, object and proxy servers (s3api + tempauth) and a
memcached on 127.0.0.1, as this user, with their state in a pytest temporary directory (``state_dir``:
``etc`` configs and rings, ``log``, ``run`` pid files). Credentials: tempauth's user ``test:tester`` with
key ``testing`` is S3 access key ``test:tester``, secret key ``testing``; region us-east-1; path-style
URLs. Everything is stopped at the end of the session, and by a watcher (start.sh's SWIFT_WATCH_PID) a second
or two after the pytest process dies, however it died.

Without the packages (``make swift-tools`` installs them, as root) the tests that use the fixture are
skipped, or fail under CI (the variable CI set), where .ci/run installs them first.

Swift 2.30's s3api (Debian 12) is an older S3 than botocore >= 1.36 assumes: it checks Content-MD5 and
the signed payload hash (x-amz-content-sha256) but ignores the x-amz-checksum-* headers; it refuses
aws-chunked bodies (501 NotImplemented: what pyarrow's AWS SDK sends unless
AWS_REQUEST_CHECKSUM_CALCULATION=WHEN_REQUIRED), and DeleteObjects without a Content-MD5 (botocore now
sends a CRC32 instead). ``env`` holds the standard four variables only, so tests see that behaviour.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.s3_server import S3Server

PROJECT_ROOT = Path(__file__).resolve().parents[1]
START = PROJECT_ROOT / "deploy" / "swift" / "start.sh"
STOP = PROJECT_ROOT / "deploy" / "swift" / "stop.sh"
ACCESS_KEY = "test:tester"  # tempauth's account:user (deploy/swift/proxy-server.conf)
SECRET_KEY = "testing"  # and its key
TOOLS = ("swift-proxy-server", "swift-account-server", "swift-container-server", "swift-object-server", "memcached")
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """A script of deploy/swift, watched by this process: its servers end when pytest does. A session of its
    own, so a Ctrl-C to pytest's process group does not cut a start or stop half-way (the fixture's cleanup
    stops the servers)."""
    env = dict(os.environ, SWIFT_WATCH_PID=str(os.getpid()), SWIFT_START_TIMEOUT=str(START_TIMEOUT_S - 10))
    return subprocess.run(
        command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
        start_new_session=True,
    )


@dataclass
class SwiftServer(S3Server):
    """An :class:`S3Server` that is a real Swift, with its state directory and a proxy to stop and start."""

    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    state_dir: Path = Path()

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1])

    def start(self) -> None:
        """Start whatever is not running (after :meth:`stop`, the proxy, on the same port); return once it answers."""
        result = _run([str(START), str(self.state_dir), str(self.port)], START_TIMEOUT_S)
        if result.returncode != 0:
            raise RuntimeError(f"deploy/swift/start.sh exited {result.returncode}:\n{result.stdout}{result.stderr}")

    def stop(self) -> None:
        """Stop the proxy alone: requests to the endpoint are refused, the stored data and the rest stay."""
        _run([str(STOP), str(self.state_dir), "proxy"], STOP_TIMEOUT_S)

    def stop_all(self) -> None:
        """Stop every server and the watcher (the end of the session)."""
        _run([str(STOP), str(self.state_dir)], STOP_TIMEOUT_S)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _require_tools() -> None:
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{', '.join(missing)} missing: .ci/run runs `make swift-tools` first")
        pytest.skip(f"{', '.join(missing)} missing: `make swift-tools` installs OpenStack Swift (as root)")


@pytest.fixture(scope="session")
def swift_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwiftServer]:
    """Swift's S3 API on 127.0.0.1 for the whole session (state and logs: swift*/state)."""
    _require_tools()
    errors = []
    for _attempt in range(3):  # a fresh port and state: the port may be taken between _free_port and bind
        server = SwiftServer(endpoint_url=f"http://127.0.0.1:{_free_port()}",
                             state_dir=tmp_path_factory.mktemp("swift") / "state")
        try:
            server.start()
        except BaseException as error:
            server.stop_all()
            if not isinstance(error, (RuntimeError, subprocess.TimeoutExpired)):
                raise
            errors.append(str(error))
            continue
        try:
            yield server
        finally:
            server.stop_all()
        return
    raise RuntimeError("Swift did not start:\n" + "\n".join(errors))
