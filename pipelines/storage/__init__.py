"""S3 and S3-compatible object stores through boto3: a client configured from params' `storage` section
(botocore's retries and timeouts, addressing style, credentials from the environment or a profile), its
errors turned into messages a user can act on, and object transfers whose integrity the server checks."""

from pipelines.storage.client import StorageError, make_client, redact
from pipelines.storage.objects import ObjectStore, StoredObject

__all__ = ["ObjectStore", "StorageError", "StoredObject", "make_client", "redact"]
