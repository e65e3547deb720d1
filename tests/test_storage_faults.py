"""S3 settings and credentials as every part that talks to S3 takes them (pipelines/storage/, fetch, publish,
remote, the Parquet source): incomplete credentials are a message, not a traceback; an s3:// Parquet source
follows the `storage` section; and no message shows the password of an endpoint URL."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import ParamsError, load_params
from pipelines.config.storage import StorageParams
from pipelines.core.errors import DataError
from pipelines.core.paths import Paths
from pipelines.core.stage import exit_on_user_error
from pipelines.data.sources import load_source
from pipelines.data.sources.parquet import s3_filesystem
from pipelines.fetch import main as fetch_main
from pipelines.prepare import prepare
from pipelines.publish import publish
from pipelines.remote import configure_remote
from pipelines.storage import ObjectStore, StorageError, make_client, redact
from tasks.params import write_overrides
from tests.conftest import SHIPPED_PARAMS, TINY_OVERRIDES, read_image_set
from tests.s3_server import S3Server, _free_port

PASSWORD = "hunter2-9c1f"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No AWS settings from this machine: no endpoint or profile variables, no ~/.aws files."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.chdir(tmp_path)  # no params.yaml here: fetch takes the shipped defaults
    return monkeypatch


@pytest.fixture
def credentials(aws_env: pytest.MonkeyPatch, s3_server: S3Server) -> S3Server:
    """The server's credentials in the environment, and no endpoint there: only the params name it."""
    aws_env.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    return s3_server


def params_for(**overrides):
    return load_params(SHIPPED_PARAMS, {**TINY_OVERRIDES, **overrides})


def parquet_bytes() -> bytes:
    """30 gray 6x5 images of 3 classes as Arrow fixed-shape tensors."""
    pixels = np.random.default_rng(0).integers(0, 256, (30, 6, 5), dtype=np.uint8)
    table = pa.table({"image": pa.FixedShapeTensorArray.from_numpy_ndarray(pixels), "label": np.arange(30) % 3})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


# --- a key id without its secret (row 10) --------------------------------------------------------


@pytest.fixture
def key_id_only(aws_env: pytest.MonkeyPatch) -> None:
    aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "")


INCOMPLETE = ("S3 client: incomplete S3 credentials (Partial credentials found in env, missing: "
              "AWS_SECRET_ACCESS_KEY): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")


@pytest.mark.integration
@pytest.mark.parametrize("listing", [False, True], ids=["fetch", "list"])
def test_fetch_with_a_key_id_and_an_empty_secret_names_the_missing_variable(
        key_id_only, s3_server: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture, listing: bool) -> None:
    with pytest.raises(SystemExit) as exit_code:
        fetch_main(["student-kd", "--bucket", "models", "--endpoint-url", s3_server.endpoint_url,
                    "--dest", str(tmp_path / "models"), *(["--list"] if listing else [])])
    assert exit_code.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith(INCOMPLETE) and "Traceback" not in error
    assert not (tmp_path / "models").exists()


@pytest.mark.integration
def test_publish_with_a_key_id_and_an_empty_secret_exits_1_and_records_nothing(
        key_id_only, s3_server: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = Paths(tmp_path / "project")
    params = params_for(**{"publish.enabled": True, "publish.bucket": "models",
                           "storage.endpoint_url": s3_server.endpoint_url})
    with pytest.raises(SystemExit) as exit_code:
        exit_on_user_error(publish, params, paths)  # what `python -m pipelines.publish` runs
    assert exit_code.value.code == 1
    assert capsys.readouterr().err.startswith(INCOMPLETE)
    assert not paths.publish_record.exists()


def test_a_parquet_source_with_a_key_id_and_an_empty_secret_names_the_missing_variable(key_id_only) -> None:
    with pytest.raises(StorageError, match=r"^S3 client: incomplete S3 credentials \(.*AWS_SECRET_ACCESS_KEY"):
        load_source(params_for(**{"data.source": "parquet:s3://data/set.parquet"}).data)


# --- an s3:// Parquet source follows the storage section (row 14) ---------------------------------


@pytest.mark.integration
def test_prepare_reads_s3_parquet_from_storage_endpoint_url_without_aws_endpoint_url(
        credentials: S3Server, tmp_path: Path) -> None:
    bucket = credentials.make_bucket()
    credentials.client().put_object(Bucket=bucket, Key="sets/digits.parquet", Body=parquet_bytes())
    (tmp_path / "digits.parquet").write_bytes(parquet_bytes())

    from_s3 = Paths(tmp_path / "from-s3")
    card = prepare(params_for(**{"data.source": f"parquet:s3://{bucket}/sets/digits.parquet",
                                 "storage.endpoint_url": credentials.endpoint_url, "storage.max_attempts": 2}), from_s3)
    local = Paths(tmp_path / "local")
    prepare(params_for(**{"data.source": f"parquet:{tmp_path / 'digits.parquet'}"}), local)

    assert card.class_names == ["0", "1", "2"] and list(card.image_shape) == [1, 6, 5]
    for split in ("train", "val", "test"):
        assert read_image_set(from_s3.split(split)).images.equal(read_image_set(local.split(split)).images)


def test_the_parquet_file_system_takes_the_storage_section_and_the_profiles_credentials(
        aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "no-credentials").write_text("[reader]\naws_access_key_id = AKIDREADER\n"
                                             "aws_secret_access_key = reader-secret\n")
    storage = StorageParams(endpoint_url=f"http://user:{PASSWORD}@127.0.0.1:9000", region="eu-west-1",
                            profile="reader", addressing_style="virtual", connect_timeout_s=3, read_timeout_s=7)
    options = s3_filesystem(storage, "bucket").__reduce__()[1][0]  # what pyarrow pickles: its settings
    assert options["endpoint_override"] == "http://127.0.0.1:9000" and options["region"] == "eu-west-1"
    assert options["access_key"] == "AKIDREADER" and options["secret_key"] == "reader-secret"
    assert options["force_virtual_addressing"] is True
    assert (options["connect_timeout"], options["request_timeout"]) == (3.0, 7.0)


def test_an_unknown_profile_for_a_parquet_source_is_a_clear_error(aws_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(StorageError, match=r"storage.profile \(or AWS_PROFILE\): no AWS profile 'nobody'"):
        s3_filesystem(StorageParams(profile="nobody", endpoint_url="http://127.0.0.1:1"), "bucket")


# --- no password of an endpoint URL in any message (row 15) --------------------------------------


@pytest.mark.parametrize("text, expected", [
    (f"http://bob:{PASSWORD}@host:9000/b/k", "http://***@host:9000/b/k"),
    ("https://bob@host", "https://***@host"),
    (f'at "http://bob:p@ss:{PASSWORD}@[::1]:9000/x?y=1" and https://a:b@c/',
     'at "http://***@[::1]:9000/x?y=1" and https://***@c/'),
    ("s3://bucket/key@1 http://host:9000/a@b", "s3://bucket/key@1 http://host:9000/a@b"),  # no user: unchanged
])
def test_redact_hides_the_user_and_password_of_every_url(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.integration
@pytest.mark.parametrize("reachable", [True, False], ids=["missing bucket", "nothing listening"])
def test_fetch_never_shows_the_password_of_the_endpoint(credentials: S3Server, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture, reachable: bool) -> None:
    address = credentials.endpoint_url.removeprefix("http://") if reachable else f"127.0.0.1:{_free_port()}"
    params_file = tmp_path / "params.yaml"
    shutil.copy(SHIPPED_PARAMS, params_file)
    write_overrides(params_file, {"storage.max_attempts": 1,
                                  "storage.endpoint_url": f"http://bob:{PASSWORD}@{address}"})
    with pytest.raises(SystemExit) as exit_code:
        fetch_main(["student-kd", "--bucket", "no-such-bucket", "--dest", str(tmp_path / "models")])
    assert exit_code.value.code == 1
    out = capsys.readouterr()
    assert (f"no such bucket at http://***@{address}" if reachable else
            f"the S3 endpoint http://***@{address} did not answer") in out.err
    assert PASSWORD not in out.out + out.err


@pytest.mark.integration
def test_a_missing_bucket_on_publish_never_shows_the_password(credentials: S3Server) -> None:
    endpoint = credentials.endpoint_url.replace("http://", f"http://bob:{PASSWORD}@")
    with pytest.raises(StorageError) as error:
        ObjectStore(make_client(StorageParams(endpoint_url=endpoint)), "no-such-bucket").check_bucket()
    assert "no such bucket at http://***@127.0.0.1:" in str(error.value) and PASSWORD not in str(error.value)


def test_an_endpoint_that_is_not_a_url_is_refused_without_repeating_it() -> None:
    with pytest.raises(StorageError, match=r"not a URL of an S3 endpoint; give http\(s\)://<host>\[:<port>\]") as error:
        make_client(StorageParams(endpoint_url=f"bob:{PASSWORD}@minio:9000"))
    assert PASSWORD not in str(error.value)


@pytest.mark.integration
def test_a_parquet_source_never_shows_the_password_of_the_endpoint(credentials: S3Server) -> None:
    storage = StorageParams(endpoint_url=f"http://bob:{PASSWORD}@127.0.0.1:{_free_port()}", max_attempts=1,
                            connect_timeout_s=1)
    with pytest.raises(DataError, match=r"data.source parquet:s3://data/set.parquet: cannot read it") as error:
        load_source(params_for(**{"data.source": "parquet:s3://data/set.parquet"}).data, storage)
    assert PASSWORD not in str(error.value)


def test_a_parquet_uri_with_a_password_is_refused_without_showing_it(aws_env: pytest.MonkeyPatch) -> None:
    refused = r"data.source parquet:s3://\*\*\*@data/set.parquet: holds a user name or password"
    with pytest.raises(DataError, match=refused) as error:
        load_source(params_for(**{"data.source": f"parquet:s3://AKID:{PASSWORD}@data/set.parquet"}).data)
    assert PASSWORD not in str(error.value)


def test_make_remote_refuses_an_endpoint_with_a_password_and_writes_nothing(tmp_path: Path) -> None:
    storage = StorageParams(dvc_remote="s3://models/distill", endpoint_url=f"https://bob:{PASSWORD}@minio.example")
    with pytest.raises(ParamsError, match=r"endpoint_url: https://\*\*\*@minio.example holds a user name") as error:
        configure_remote(storage, tmp_path)
    assert PASSWORD not in str(error.value) and list(tmp_path.iterdir()) == []


@pytest.mark.integration  # runs `dvc remote`
def test_make_remote_outside_a_dvc_project_is_a_failed_command_not_a_params_error(tmp_path: Path) -> None:
    storage = StorageParams(dvc_remote="s3://models/distill")
    failed = r"^dvc remote add --default --force storage s3://models/distill failed: "
    with pytest.raises(DataError, match=failed) as error:
        configure_remote(storage, tmp_path)
    assert not isinstance(error.value, ParamsError) and list(tmp_path.iterdir()) == []
