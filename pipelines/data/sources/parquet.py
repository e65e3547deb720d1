"""`parquet:<file or s3://bucket/key>`: an image column (encoded PNG/JPEG bytes, Arrow fixed-shape tensors,
or pixel lists with a shape) and a label column; names in data.parquet_columns. An s3:// object is read
with params' `storage` section, as publish and fetch read theirs (`s3_filesystem`)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.config.data import DataParams, ParquetColumns
from pipelines.config.storage import StorageParams
from pipelines.core.errors import DataError
from pipelines.data.sources.arrays import array_layout, as_uint8_nchw
from pipelines.data.sources.base import Source, classes_from_labels
from pipelines.data.sources.encoded import common_format, decode, read_header


def read_parquet(location: str, params: DataParams, storage: StorageParams = StorageParams()) -> Source:
    columns, size = params.parquet_columns, params.resize
    file = _open_parquet(location, storage)
    names = file.schema_arrow.names
    missing = [column for column in (columns.image, columns.label) if column not in names]
    if missing:
        raise DataError(
            f"{location}: no column {', '.join(missing)} (it has {', '.join(names)}); set data.parquet_columns"
        )
    raw_labels = file.read(columns=[columns.label]).column(0).to_numpy(zero_copy_only=False)
    metadata = file.schema_arrow.metadata or {}
    # Files written by this pipeline carry their class names; integer labels index them.
    known = json.loads(metadata.get(b"class_names", b"null"))
    integer = np.issubdtype(raw_labels.dtype, np.integer)
    if known and integer and raw_labels.min() >= 0 and raw_labels.max() < len(known):
        labels, class_names = raw_labels.astype(np.int64), known
    else:
        labels, class_names = classes_from_labels(raw_labels)

    def image_chunks(n: int) -> Iterator[pa.Array]:
        for batch in file.iter_batches(batch_size=n, columns=[columns.image]):
            yield batch.column(0)

    image_type = file.schema_arrow.field(columns.image).type
    if pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type):
        return _encoded_parquet(location, image_chunks, labels, class_names, size)
    if isinstance(image_type, pa.FixedShapeTensorType):  # Arrow's tensor type: the column knows the shape
        dtype = np.dtype(image_type.value_type.to_pandas_dtype())
        layout, tensor_shape = array_layout(tuple(image_type.shape), dtype, location)

        def tensors(n: int) -> Iterator[np.ndarray]:
            for chunk in image_chunks(n):
                yield as_uint8_nchw(chunk.to_numpy_ndarray(), layout, location)

        return Source(labels, class_names, tensor_shape, tensors)
    shape = _list_image_shape(location, file, columns, metadata)

    def batches(n: int) -> Iterator[np.ndarray]:
        start = 0
        for chunk in image_chunks(n):
            values = chunk.flatten().to_numpy(zero_copy_only=False)
            if len(values) != len(chunk) * int(np.prod(shape)):
                raise DataError(f"{location}: image shape {list(shape)} does not fit the pixels of every row")
            yield list_pixels(values.reshape(len(chunk), *shape),
                              f"{location}: column {columns.image}, rows {start} to {start + len(chunk) - 1}")
            start += len(chunk)

    return Source(labels, class_names, shape, batches)


def list_pixels(values: np.ndarray, where: str) -> np.ndarray:
    """uint8 [N, C, H, W] from a column of pixel lists: integers must be in 0..255 (a cast would wrap the others
    around), floats finite and in [0, 1] (as_uint8_nchw)."""
    if not np.issubdtype(values.dtype, np.integer):
        return as_uint8_nchw(values, "CHW", where)
    if values.size and (values.min() < 0 or values.max() > 255):
        raise DataError(f"{where}: integer pixels in [{values.min()}, {values.max()}], outside 0..255: store 8-bit "
                        f"values, or floats in [0, 1]")
    return values.astype(np.uint8)


def _open_parquet(location: str, storage: StorageParams) -> pq.ParquetFile:
    """A local or s3:// Parquet file, opened for reading column by column and batch by batch."""
    if location.startswith("s3://"):
        from pipelines.storage import redact

        if redact(location) != location:
            raise DataError(f"data.source parquet:{redact(location)}: holds a user name or password: take them out "
                            f"of the URL; S3 credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or "
                            f"storage.profile")
        bucket, _, key = location.removeprefix("s3://").partition("/")
        try:
            filesystem = s3_filesystem(storage, bucket)
            return pq.ParquetFile(f"{bucket}/{key}", filesystem=filesystem, pre_buffer=False)
        except (OSError, pa.ArrowException) as error:
            raise DataError(f"data.source parquet:{redact(location)}: cannot read it ({redact(str(error))})") from None
    if not Path(location).is_file():
        raise DataError(f"data.source parquet:{location}: no such file")
    # Without pre_buffer=False, iterating a file keeps every row group it has read: memory grows with the file.
    return pq.ParquetFile(location, pre_buffer=False)


def s3_filesystem(storage: StorageParams, bucket: str) -> pafs.S3FileSystem:
    """pyarrow's S3 file system, set up as boto3's client is (pipelines.storage.make_client): the endpoint
    (storage.endpoint_url, else AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL), region, addressing style, connect
    and read timeouts, and attempts per request; the credentials are the ones boto3 finds (storage.profile,
    the AWS_* variables, ~/.aws, an instance role), since pyarrow knows no profiles. Without an endpoint or a
    region, the bucket's own region is asked for, as pyarrow does for an s3:// URI."""
    from pipelines.storage.client import USERINFO, aws_session, setup_errors

    endpoint = storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    session = aws_session(storage)
    with setup_errors():  # a key id without its secret, a broken ~/.aws/config
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
    options = {} if frozen is None else {"access_key": frozen.access_key, "secret_key": frozen.secret_key,
                                         "session_token": frozen.token}
    if endpoint:  # pyarrow takes the scheme from the URL; a user name and password (S3 uses neither) are dropped
        options["endpoint_override"] = USERINFO.sub("", endpoint)
    retries = pafs.AwsDefaultS3RetryStrategy if storage.retry_mode == "legacy" else pafs.AwsStandardS3RetryStrategy
    return pafs.S3FileSystem(
        region=storage.region or session.region_name or (None if endpoint else pafs.resolve_s3_region(bucket)),
        connect_timeout=storage.connect_timeout_s, request_timeout=storage.read_timeout_s,
        retry_strategy=retries(max_attempts=storage.max_attempts),
        force_virtual_addressing=storage.addressing_style == "virtual", **options,
    )


def _encoded_parquet(
    location: str,
    image_chunks: Callable[[int], Iterator[pa.Array]],
    labels: np.ndarray,
    class_names: list[str],
    size: tuple[int, int] | None,
) -> Source:
    """PNG/JPEG bytes per row: a first pass reads each image's header (mode, size), the second decodes."""
    headers = []
    row = 0
    for chunk in image_chunks(1024):
        for data in chunk.to_pylist():
            headers.append(read_header(io.BytesIO(data), f"{location} row {row}"))
            row += 1
    mode, image_size = common_format(headers, size, location)

    def batches(n: int) -> Iterator[np.ndarray]:
        row = 0
        for chunk in image_chunks(n):
            encoded = [(io.BytesIO(data), f"{location} row {row + i}") for i, data in enumerate(chunk.to_pylist())]
            row += len(encoded)
            yield decode(encoded, mode, image_size)

    return Source(labels, class_names, (3 if mode == "RGB" else 1, *image_size), batches)


def _list_image_shape(location: str, file: pq.ParquetFile, columns: ParquetColumns, metadata: dict) -> tuple:
    """[C, H, W] of images stored as pixel lists: from the per-row shape column, or the image_shape metadata."""
    if columns.shape in file.schema_arrow.names:
        shapes = {tuple(shape) for shape in file.read(columns=[columns.shape]).column(0).to_pylist()}
        if len(shapes) > 1:
            raise DataError(
                f"{location}: images of different shapes {sorted(shapes)[:2]}: convert them to one size first"
            )
        [shape] = shapes
    elif b"image_shape" in metadata:
        shape = tuple(json.loads(metadata[b"image_shape"]))
    else:
        raise DataError(
            f"{location}: list images need a {columns.shape!r} column or image_shape metadata ([C, H, W])"
        )
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise DataError(f"{location}: image shape {list(shape)} is not [C, H, W] with C 1 or 3")
    return tuple(int(side) for side in shape)
