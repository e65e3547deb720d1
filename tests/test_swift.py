"""OpenStack Swift's S3 API on loopback (tests/swift_server.py): what boto3, pyarrow and the pipeline's S3 code
can count on from a real, non-AWS object store, and what they cannot (checksums, aws-chunked, DeleteObjects)."""

from __future__ import annotations

import base64
import hashlib
import io
import os

import botocore.exceptions
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from botocore.config import Config

from tests.swift_server import SwiftServer

pytestmark = [pytest.mark.swift, pytest.mark.integration]
MiB = 1 << 20


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def bad_digest(error: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> bool:
    return error.value.response["Error"]["Code"] == "BadDigest"


# Fail at once instead of botocore's legacy retries (it retries BadDigest, and a refused connection 4 times).
NO_RETRIES = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=1, read_timeout=10)


def test_server_listens_on_loopback_with_tempauths_user(swift_server: SwiftServer) -> None:
    assert swift_server.endpoint_url.startswith("http://127.0.0.1:")
    credentials = (swift_server.access_key, swift_server.secret_key, swift_server.region)
    assert credentials == ("test:tester", "testing", "us-east-1")
    assert swift_server.env["AWS_ENDPOINT_URL"] == swift_server.endpoint_url
    for conf in (swift_server.state_dir / "etc").glob("*-server.conf"):
        assert "bind_ip = 127.0.0.1" in conf.read_text()


def test_put_then_get_returns_the_same_bytes(swift_server: SwiftServer) -> None:
    bucket = swift_server.make_bucket()
    body = os.urandom(300_000)
    client = swift_server.client()  # botocore's defaults: CRC32 checksum headers, which Swift ignores
    client.put_object(Bucket=bucket, Key="dir/blob.bin", Body=body)

    got = client.get_object(Bucket=bucket, Key="dir/blob.bin")
    assert got["Body"].read() == body
    assert got["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert client.get_bucket_location(Bucket=bucket)["LocationConstraint"] is None  # us-east-1


def test_content_md5_and_the_signed_payload_hash_are_checked_but_not_x_amz_checksums(swift_server: SwiftServer) -> None:
    bucket = swift_server.make_bucket()
    client = swift_server.client(config=NO_RETRIES)
    with pytest.raises(botocore.exceptions.ClientError) as error:
        client.put_object(Bucket=bucket, Key="md5", Body=b"hello", ContentMD5=md5_b64(b"other"))
    assert bad_digest(error)

    # A body that differs from the one signed (x-amz-content-sha256): refused too.
    tampering = swift_server.client(config=NO_RETRIES)
    tampering.meta.events.register("before-send.s3.PutObject", lambda request, **_: setattr(request, "body", b"HELLO"))
    with pytest.raises(botocore.exceptions.ClientError) as error:
        tampering.put_object(Bucket=bucket, Key="tampered", Body=b"hello")
    assert bad_digest(error)

    # x-amz-checksum-sha256 is not checked: a wrong one is stored without a word.
    wrong_sha256 = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    client.put_object(Bucket=bucket, Key="sha", Body=b"hello", ChecksumSHA256=wrong_sha256)
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["sha"]


def test_multipart_upload_checks_each_parts_md5(swift_server: SwiftServer) -> None:
    bucket = swift_server.make_bucket()
    client = swift_server.client(config=NO_RETRIES)
    parts_data = [os.urandom(5 * MiB), os.urandom(MiB + 123)]  # every part but the last: 5 MiB at least
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="big.bin")["UploadId"]
    with pytest.raises(botocore.exceptions.ClientError) as error:
        client.upload_part(Bucket=bucket, Key="big.bin", UploadId=upload_id, PartNumber=2,
                           Body=parts_data[1], ContentMD5=md5_b64(parts_data[0]))
    assert bad_digest(error)

    parts = []
    for number, data in enumerate(parts_data, start=1):
        etag = client.upload_part(Bucket=bucket, Key="big.bin", UploadId=upload_id, PartNumber=number,
                                  Body=data, ContentMD5=md5_b64(data))["ETag"]
        assert etag == f'"{hashlib.md5(data).hexdigest()}"'
        parts.append({"PartNumber": number, "ETag": etag})
    listed = client.list_parts(Bucket=bucket, Key="big.bin", UploadId=upload_id)["Parts"]
    assert [(part["PartNumber"], part["Size"]) for part in listed] == [(1, 5 * MiB), (2, MiB + 123)]
    done = client.complete_multipart_upload(Bucket=bucket, Key="big.bin", UploadId=upload_id,
                                            MultipartUpload={"Parts": parts})
    assert done["ETag"].endswith('-2"')
    assert client.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == b"".join(parts_data)


def test_boto3_managed_upload_of_a_large_file(swift_server: SwiftServer) -> None:
    bucket = swift_server.make_bucket()
    body = os.urandom(12 * MiB)  # above boto3's 8 MiB threshold: a multipart upload
    swift_server.client().upload_fileobj(io.BytesIO(body), bucket, "managed.bin")
    assert swift_server.client().get_object(Bucket=bucket, Key="managed.bin")["Body"].read() == body


def test_listing_with_prefix_and_delimiter(swift_server: SwiftServer) -> None:
    bucket = swift_server.make_bucket()
    client = swift_server.client()
    for key in ("a/1", "a/2", "a/b/3", "c"):
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    everything = client.list_objects_v2(Bucket=bucket)
    assert [item["Key"] for item in everything["Contents"]] == ["a/1", "a/2", "a/b/3", "c"]
    level = client.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [item["Key"] for item in level["Contents"]] == ["a/1", "a/2"]
    assert [prefix["Prefix"] for prefix in level["CommonPrefixes"]] == ["a/b/"]
    with pytest.raises(botocore.exceptions.ClientError) as error:
        client.list_objects_v2(Bucket="no-such-bucket-here")
    assert error.value.response["Error"]["Code"] == "NoSuchBucket"


def test_path_style_addressing(swift_server: SwiftServer) -> None:
    bucket = swift_server.make_bucket()
    client = swift_server.client(config=Config(s3={"addressing_style": "path"}))
    urls: list[str] = []
    client.meta.events.register("before-send.s3", lambda request, **_: urls.append(request.url))
    client.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert urls == [f"{swift_server.endpoint_url}/{bucket}/k"]


def test_delete_objects_needs_a_content_md5(swift_server: SwiftServer) -> None:
    bucket = swift_server.make_bucket()
    client = swift_server.client(config=NO_RETRIES)
    client.put_object(Bucket=bucket, Key="k", Body=b"v")
    with pytest.raises(botocore.exceptions.ClientError) as error:  # botocore sends a CRC32, Swift wants MD5
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k"}]})
    assert "Content-MD5" in error.value.response["Error"]["Message"]

    def add_md5(params: dict, **_: object) -> None:
        params["headers"]["Content-MD5"] = md5_b64(params["body"])

    client.meta.events.register("before-call.s3.DeleteObjects", add_md5)
    assert client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k"}]})["Deleted"] == [{"Key": "k"}]


def test_pyarrow_reads_parquet_from_the_standard_variables(
    swift_server: SwiftServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in swift_server.env.items():
        monkeypatch.setenv(name, value)
    bucket = swift_server.make_bucket()
    table = pa.table({"label": list(range(100)), "name": [f"row{i}" for i in range(100)]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=25)
    swift_server.client().put_object(Bucket=bucket, Key="data/table.parquet", Body=buffer.getvalue())

    fs, path = pafs.FileSystem.from_uri(f"s3://{bucket}/data/table.parquet")
    assert isinstance(fs, pafs.S3FileSystem)
    assert pq.read_table(path, filesystem=fs).equals(table)
    assert pq.ParquetFile(path, filesystem=fs).metadata.num_row_groups == 4

    # pyarrow's writes: aws-chunked bodies by default, which Swift refuses; plain ones when checksums are
    # only sent where required.
    with pytest.raises(OSError, match="aws-chunked"):
        pq.write_table(table, f"{bucket}/written.parquet", filesystem=fs)
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")
    fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}/")
    pq.write_table(table, f"{bucket}/written.parquet", filesystem=fs)
    assert pq.read_table(f"{bucket}/written.parquet", filesystem=fs).equals(table)


def test_stop_refuses_connections_and_start_brings_the_data_back(swift_server: SwiftServer) -> None:
    bucket = swift_server.make_bucket()
    client = swift_server.client(config=NO_RETRIES)
    client.put_object(Bucket=bucket, Key="kept", Body=b"still here")
    first = os.urandom(5 * MiB)
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="resumed")["UploadId"]
    etag1 = client.upload_part(Bucket=bucket, Key="resumed", UploadId=upload_id, PartNumber=1, Body=first)["ETag"]

    swift_server.stop()
    try:
        with pytest.raises(botocore.exceptions.EndpointConnectionError):
            client.upload_part(Bucket=bucket, Key="resumed", UploadId=upload_id, PartNumber=2, Body=b"tail")
    finally:
        swift_server.start()

    assert client.get_object(Bucket=bucket, Key="kept")["Body"].read() == b"still here"
    etag2 = client.upload_part(Bucket=bucket, Key="resumed", UploadId=upload_id, PartNumber=2, Body=b"tail")["ETag"]
    client.complete_multipart_upload(Bucket=bucket, Key="resumed", UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": etag1}, {"PartNumber": 2, "ETag": etag2}]})
    assert client.get_object(Bucket=bucket, Key="resumed")["Body"].read() == first + b"tail"
