"""Objects of one bucket: uploads the server verifies, downloads checked against a SHA-256.

Every upload carries Content-MD5 (each part's, for multipart uploads), so the server refuses a body
damaged on the way (BadDigest) instead of storing it. (The ETag it answers is not an MD5 under SSE-KMS,
so it proves nothing and is not compared.) Each object
also records its SHA-256 in its metadata: an upload whose object is already there with that digest and
size is skipped, so publishing again, or finishing a publish an outage cut short, sends only what is
missing.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pipelines.storage.client import StorageError, redact, s3_errors

log = logging.getLogger(__name__)

SHA256_KEY = "sha256"  # the object metadata entry (x-amz-meta-sha256) holding the body's SHA-256
READ_CHUNK = 1024 * 1024
Progress = Callable[[str, int, int], None]  # (key, bytes sent so far, size)


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str | None  # from the object's metadata, if it was uploaded with one


class ObjectStore:
    """One bucket of an S3 client (pipelines.storage.make_client)."""

    def __init__(self, client: Any, bucket: str):
        self.client = client
        self.bucket = bucket

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    def check_bucket(self) -> None:
        """StorageError unless the bucket exists and these credentials reach it."""
        from botocore.exceptions import ClientError

        with s3_errors(self.client, self.uri()):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as error:  # a HEAD answer has no body, so no code beyond its status
                status = error.response.get("Error", {}).get("Code")
                if status in ("404", "NoSuchBucket"):
                    raise StorageError(f"{self.uri()}: no such bucket at {redact(self.client.meta.endpoint_url)}: "
                                       f"create it, or fix the bucket's name") from None
                if status != "403":
                    raise
                # Forbidden: a listing's answer says why (a wrong secret, an unknown key id, a policy).
                self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)

    def head(self, key: str) -> StoredObject | None:
        """The object's size and recorded SHA-256, or None if there is no such object."""
        from botocore.exceptions import ClientError

        with s3_errors(self.client, self.uri(key)):
            try:
                answer = self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                    return None
                raise
        return StoredObject(key, answer["ContentLength"], answer.get("Metadata", {}).get(SHA256_KEY))

    def list_keys(self, prefix: str) -> list[str]:
        """The keys under `prefix` (all pages)."""
        with s3_errors(self.client, self.uri(prefix)):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def get_bytes(self, key: str) -> bytes | None:
        """A small object's body, or None if there is no such object."""
        from botocore.exceptions import ClientError

        with s3_errors(self.client, self.uri(key)):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == "NoSuchKey":
                    return None
                raise

    def download(self, key: str, path: Path) -> tuple[int, str] | None:
        """Stream the object into `path`; return its size and SHA-256 (the caller compares them), or None if
        there is no such object."""
        from botocore.exceptions import ClientError

        digest, size = hashlib.sha256(), 0
        with s3_errors(self.client, self.uri(key)):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == "NoSuchKey":
                    return None
                raise
            with open(path, "wb") as out:
                for chunk in iter(lambda: body.read(READ_CHUNK), b""):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        return size, digest.hexdigest()

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """A small object in one request (a single PUT replaces an object atomically: readers see the old
        body or the new one, never a mix)."""
        with s3_errors(self.client, self.uri(key)):
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, ContentMD5=_b64_md5(data),
                Metadata={SHA256_KEY: hashlib.sha256(data).hexdigest()},
            )

    def upload_file(self, key: str, path: Path, sha256: str, part_size: int, multipart_threshold: int,
                    progress: Progress | None = None) -> bool:
        """Upload `path` (whose SHA-256 the caller computed) unless the object is already there with that
        digest and size; in parts of `part_size` above `multipart_threshold`. True if anything was sent."""
        size = path.stat().st_size
        existing = self.head(key)
        if existing is not None and existing.size == size and existing.sha256 == sha256:
            return False
        with open(path, "rb") as body:
            if size <= multipart_threshold:
                data = body.read()
                with s3_errors(self.client, self.uri(key)):
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=_b64_md5(data),
                                           Metadata={SHA256_KEY: sha256})
                if progress:
                    progress(key, size, size)
            else:
                self._upload_parts(key, body, size, sha256, part_size, progress)
        return True

    def _upload_parts(self, key: str, body: BinaryIO, size: int, sha256: str, part_size: int,
                      progress: Progress | None) -> None:
        """A multipart upload, each part with its Content-MD5; aborted (so it stores nothing) if a part fails."""
        uri = self.uri(key)
        with s3_errors(self.client, uri):
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key,
                                                            Metadata={SHA256_KEY: sha256})["UploadId"]
        try:
            parts, sent = [], 0
            for number, chunk in enumerate(iter(lambda: body.read(part_size), b""), start=1):
                with s3_errors(self.client, f"{uri} (part {number})"):
                    answer = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                     PartNumber=number, Body=chunk, ContentMD5=_b64_md5(chunk))
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                sent += len(chunk)
                if progress:
                    progress(key, sent, size)
            with s3_errors(self.client, uri):
                self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                      MultipartUpload={"Parts": parts})
        except BaseException:
            self._abort(key, upload_id)
            raise

    def _abort(self, key: str, upload_id: str) -> None:
        """Drop a failed multipart upload's parts. Best effort: the store may be the thing that failed; a bucket
        lifecycle rule (AbortIncompleteMultipartUpload) removes what is left then."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as error:  # noqa: BLE001 - the upload's own error is the one to report
            log.warning("%s: could not abort the failed multipart upload (%s)", self.uri(key), type(error).__name__)


def _b64_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()

