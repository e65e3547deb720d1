"""A boto3 S3 client from params' `storage` section, and S3's failures as StorageError messages.

Retries are botocore's own (`standard` mode: exponential backoff with jitter, on connection errors,
throttling and 5xx answers), bounded by `max_attempts` and the timeouts, so an unreachable store fails in
bounded time. Messages name the endpoint, the bucket or object and what to check; they are built from the
error's code and the server's message only, so no credential can appear in them (boto3 never puts the
secret key in an exception, and the exceptions are not chained), and every URL in them goes through
`redact`, which hides the user name and password an endpoint URL may carry (http://user:password@host).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipelines.config.storage import StorageParams
from pipelines.core.errors import DataError

# What S3 (and S3-compatible servers) answer to an unknown key id or a wrong secret.
CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId", "InvalidToken",
                    "ExpiredToken", "AuthorizationHeaderMalformed"}
MISSING_BUCKET_CODES = {"NoSuchBucket"}
CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), "
                    "or name an AWS profile in storage.profile or AWS_PROFILE")


class StorageError(DataError):
    """S3 could not be reached, or refused a request: the message says where and what to check."""


# The userinfo of a URL (`user:password@` after `scheme://`, up to the host): it never reaches a message.
USERINFO = re.compile(r"(?<=://)[^\s/?#\"'<>]*@")


def redact(text: str) -> str:
    """`text` with the user name and password of every URL in it replaced by `***`."""
    return USERINFO.sub("***@", text)


def aws_session(settings: StorageParams = StorageParams()) -> Any:
    """A boto3 session of storage.profile (unset: AWS_PROFILE, the AWS_* variables, an instance role)."""
    import boto3

    with setup_errors():
        return boto3.Session(profile_name=settings.profile)


def make_client(settings: StorageParams = StorageParams()) -> Any:
    """A boto3 S3 client. Unset endpoint, region and profile fall back to boto3's own lookup (AWS_ENDPOINT_URL,
    AWS_DEFAULT_REGION, AWS_PROFILE, ~/.aws). Checksums are sent where a request requires them only: S3's newer
    default checksum headers are not understood by every S3-compatible server; the object code sends Content-MD5
    on every upload, which they all check."""
    from botocore.config import Config

    config = Config(
        retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},  # the first try included
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        s3={"addressing_style": settings.addressing_style},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = aws_session(settings)
    with setup_errors():  # the credentials are looked up here: a key id without its secret fails now
        return session.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config)


@contextmanager
def setup_errors() -> Iterator[None]:
    """botocore's errors while a session or a client is set up, before any request, as a StorageError."""
    from botocore.exceptions import BotoCoreError, NoCredentialsError, PartialCredentialsError, ProfileNotFound

    try:
        yield
    except ProfileNotFound as error:
        raise StorageError(f"storage.profile (or AWS_PROFILE): no AWS profile {error.kwargs.get('profile')!r} in "
                           f"~/.aws/config or ~/.aws/credentials") from None
    except (NoCredentialsError, PartialCredentialsError) as error:
        raise StorageError(credentials_text("S3 client", error)) from None
    except BotoCoreError as error:  # botocore's own messages hold no secret; a URL in them is redacted
        raise StorageError(f"S3 client: {redact(str(error))}") from None
    except ValueError:  # botocore's "Invalid endpoint: <the URL>", which may hold a password: not repeated
        raise StorageError("storage.endpoint_url (or --endpoint-url, AWS_ENDPOINT_URL): not a URL of an S3 "
                           "endpoint; give http(s)://<host>[:<port>]") from None


def credentials_text(what: str, error: Exception) -> str:
    """No credentials, or a key id without its secret (botocore's message names the missing variable)."""
    from botocore.exceptions import PartialCredentialsError

    if isinstance(error, PartialCredentialsError):
        return f"{what}: incomplete S3 credentials ({error}): {CREDENTIALS_HINT}"
    return f"{what}: no S3 credentials found: {CREDENTIALS_HINT}"


@contextmanager
def s3_errors(client: Any, what: str) -> Iterator[None]:
    """Turn botocore's exceptions inside the block into a StorageError about `what` (an s3:// URI, a bucket)."""
    from botocore.exceptions import (BotoCoreError, ClientError, ConnectionError, HTTPClientError,
                                     NoCredentialsError, PartialCredentialsError)

    endpoint = redact(client.meta.endpoint_url)
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError) as error:
        raise StorageError(credentials_text(what, error)) from None
    except (ConnectionError, HTTPClientError) as error:  # refused, timed out, cut: after botocore's retries
        attempts = client.meta.config.retries.get("total_max_attempts", "several")
        raise StorageError(
            f"{what}: the S3 endpoint {endpoint} did not answer ({type(error).__name__}, {attempts} attempts): check "
            f"storage.endpoint_url (or AWS_ENDPOINT_URL) and the network, then run again"
        ) from None
    except ClientError as error:
        raise StorageError(f"{what}: {redact(client_error_text(error, endpoint))}") from None
    except BotoCoreError as error:  # botocore's own messages hold no secret; a URL in them is redacted
        raise StorageError(f"{what}: {redact(str(error))}") from None


def client_error_text(error: Any, endpoint: str) -> str:
    """What an error answer of the server means, from its code and message."""
    details = error.response.get("Error", {})
    code = str(details.get("Code", "unknown"))
    message = details.get("Message") or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    operation = getattr(error, "operation_name", "request")
    if code in CREDENTIAL_CODES:
        return f"S3 at {endpoint} refused the credentials ({code}): {CREDENTIALS_HINT}"
    if code in MISSING_BUCKET_CODES:
        return f"no such bucket at {endpoint} ({code}): create it, or fix the bucket's name"
    if code in ("AccessDenied", "403"):
        return (f"S3 at {endpoint} denied {operation} ({code}): the credentials lack permission here, or are not "
                f"the right ones: {CREDENTIALS_HINT}")
    return f"S3 at {endpoint} answered {code} to {operation}: {message}"
