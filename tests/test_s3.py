"""S3 on loopback (tests/s3_server.py): boto3, pyarrow and DVC all reach a real S3 API with the standard AWS
variables."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tests.conftest import run
from tests.s3_server import S3Server

pytestmark = pytest.mark.integration


def parquet_bytes(table: pa.Table, row_group_size: int) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=row_group_size)
    return buffer.getvalue()


def test_server_listens_on_loopback_only(s3_server: S3Server) -> None:
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    assert s3_server.env["AWS_ENDPOINT_URL"] == s3_server.endpoint_url


def test_buckets_are_new_and_empty(s3_server: S3Server) -> None:
    first, second = s3_server.make_bucket(), s3_server.make_bucket()
    assert first != second
    names = {bucket["Name"] for bucket in s3_server.client().list_buckets()["Buckets"]}
    assert {first, second} <= names
    assert s3_server.client().list_objects_v2(Bucket=first)["KeyCount"] == 0


def test_boto3_put_then_get_returns_the_same_bytes(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket()
    body = bytes(range(256)) * 64
    s3_server.client().put_object(Bucket=bucket, Key="dir/blob.bin", Body=body)

    got = s3_server.client().get_object(Bucket=bucket, Key="dir/blob.bin")
    assert got["Body"].read() == body
    assert got["ContentLength"] == len(body)


def test_boto3_finds_the_server_from_the_standard_variables_alone(s3_env: S3Server) -> None:
    import boto3

    bucket = s3_env.make_bucket()
    client = boto3.client("s3")  # endpoint, credentials and region from AWS_* only
    client.put_object(Bucket=bucket, Key="k", Body=b"hello")
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"hello"
    assert client.meta.endpoint_url == s3_env.endpoint_url


def test_pyarrow_reads_an_s3_uri_with_only_the_standard_variables(s3_env: S3Server) -> None:
    bucket = s3_env.make_bucket()
    table = pa.table({"label": list(range(100)), "name": [f"row{i}" for i in range(100)]})
    s3_env.client().put_object(Bucket=bucket, Key="data/table.parquet", Body=parquet_bytes(table, 25))
    uri = f"s3://{bucket}/data/table.parquet"

    # FileSystem.from_uri takes the endpoint from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL
    # (a bare pafs.S3FileSystem() does not: it would go to AWS).
    fs, path = pafs.FileSystem.from_uri(uri)
    assert isinstance(fs, pafs.S3FileSystem)
    assert path == f"{bucket}/data/table.parquet"
    assert pq.read_table(path, filesystem=fs).equals(table)
    # A plain s3:// path goes through from_uri too.
    assert pq.read_table(uri).equals(table)


def test_pyarrow_streams_an_s3_parquet_object_in_batches(s3_env: S3Server) -> None:
    bucket = s3_env.make_bucket()
    table = pa.table({"label": list(range(100))})
    s3_env.client().put_object(Bucket=bucket, Key="t.parquet", Body=parquet_bytes(table, 25))

    fs, path = pafs.FileSystem.from_uri(f"s3://{bucket}/t.parquet")
    parquet = pq.ParquetFile(path, filesystem=fs)
    assert parquet.metadata.num_rows == 100
    assert parquet.metadata.num_row_groups == 4
    batches = list(parquet.iter_batches(batch_size=30))
    assert [batch.num_rows for batch in batches] == [30, 30, 30, 10]
    assert pa.Table.from_batches(batches).equals(table)


@pytest.mark.slow
def test_dvc_pushes_to_and_pulls_from_an_s3_remote(s3_env: S3Server, tmp_path: Path) -> None:
    bucket = s3_env.make_bucket("dvc")
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    # Endpoint in the remote's config; credentials and region from AWS_* in the environment.
    run(["dvc", "remote", "add", "-d", "storage", f"s3://{bucket}/store"], repo)
    run(["dvc", "remote", "modify", "storage", "endpointurl", s3_env.endpoint_url], repo)
    data = repo / "data.bin"
    content = bytes(range(256)) * 1000
    data.write_bytes(content)
    run(["dvc", "add", "data.bin"], repo)

    run(["dvc", "push"], repo)
    stored = s3_env.client().list_objects_v2(Bucket=bucket, Prefix="store/")
    assert stored["KeyCount"] == 1

    shutil.rmtree(repo / ".dvc" / "cache")
    data.unlink()
    run(["dvc", "pull"], repo)
    assert data.read_bytes() == content


def test_make_remote_commits_what_every_clone_needs_and_keeps_the_profile_and_credentials_out(tmp_path: Path) -> None:
    from pipelines.config.storage import StorageParams
    from pipelines.remote import configure_remote

    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    settings = {"dvc_remote": "s3://models-bucket/distill", "endpoint_url": "http://127.0.0.1:9000",
                "region": "eu-west-1", "profile": "team"}
    configure_remote(StorageParams(**settings), tmp_path)
    committed = (tmp_path / ".dvc" / "config").read_text()
    for line in ("remote = storage", "url = s3://models-bucket/distill", "endpointurl = http://127.0.0.1:9000",
                 "region = eu-west-1", "connect_timeout = 10", "read_timeout = 60"):
        assert line in committed
    assert "profile" not in committed and "secret" not in committed and "access_key" not in committed
    assert "profile = team" in (tmp_path / ".dvc" / "config.local").read_text()
    assert ".dvc/config.local" not in run(["git", "status", "--porcelain", "--untracked-files=all"], tmp_path).stdout

    # Settings removed from params are removed from the remote.
    configure_remote(StorageParams(dvc_remote="s3://models-bucket/distill"), tmp_path)
    committed = (tmp_path / ".dvc" / "config").read_text()
    assert "endpointurl" not in committed and "region" not in committed
    assert "profile" not in (tmp_path / ".dvc" / "config.local").read_text()
