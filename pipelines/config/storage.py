"""The `storage` and `publish` sections: where S3 is and how to reach it, and which students are published there.

`storage` is read by everything that talks to S3 (publishing, fetching, a `parquet:s3://...` data source,
`make remote` for DVC's remote). It holds no secret: credentials come from the environment
(`AWS_ACCESS_KEY_ID`, ...), an AWS profile or an instance role, as boto3 finds them, and an unknown key such
as `secret_access_key` is refused like any other.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipelines.config.base import Section

MiB = 1024 * 1024
MIN_PART_MB = 5  # S3's smallest part of a multipart upload (all but the last)
PUBLISHED_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")  # a key segment and a DVC artifact name alike
ALIAS_NAME = re.compile(r"[a-z][a-z0-9_-]*")
# Metrics of metrics/eval.json a publish may be gated on, and whether more is better.
GATE_METRICS = {"accuracy": "max", "macro_f1": "max", "agreement_with_teacher": "max", "nll": "min", "ece": "min"}


class StorageParams(Section):
    # null: AWS, or AWS_ENDPOINT_URL; e.g. http://127.0.0.1:8080 for an S3-compatible server
    endpoint_url: str | None = None
    region: str | None = None  # null: AWS_DEFAULT_REGION or the profile's
    profile: str | None = None  # an AWS profile (~/.aws); null: AWS_PROFILE, the AWS_* variables, an instance role
    addressing_style: Literal["auto", "path", "virtual"] = "auto"  # path for most S3-compatible servers
    retry_mode: Literal["standard", "adaptive", "legacy"] = "standard"  # botocore's retries, with backoff
    max_attempts: int = Field(default=5, ge=1, le=20)  # tries of one request before it fails
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    dvc_remote: str | None = None  # s3://bucket/prefix of DVC's default remote (`make remote` configures it)

    @field_validator("dvc_remote")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,62}(/.*)?", value):
            raise ValueError(f"expected s3://<bucket>[/<prefix>], got {value!r}")
        return value


class GateParams(Section):
    metric: str = "accuracy"  # publish only a student that beats the published version on this test metric
    min_delta: float = Field(default=0.0, ge=0.0)  # by more than this

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in GATE_METRICS:
            raise ValueError(f"unknown metric {value!r}; valid: {', '.join(GATE_METRICS)}")
        return value

    @property
    def higher_is_better(self) -> bool:
        return GATE_METRICS[self.metric] == "max"


class PublishParams(Section):
    enabled: bool = False  # the publish stage does nothing (and says so) unless true
    bucket: str | None = None
    prefix: str = "students"  # s3://<bucket>/<prefix>/<name>/<version>/
    students: dict[str, str] = {"student_kd": "student-kd"}  # model of the pipeline -> its published name
    aliases: list[str] = ["staging"]  # moved to every version published, besides `latest`
    gate: GateParams = GateParams()
    export: bool = True  # also a torch.export program (model.pt2, torch alone) and an ONNX model (model.onnx)
    multipart_threshold_mb: int = Field(default=64, ge=MIN_PART_MB)  # files above this go up in parts
    part_size_mb: int = Field(default=16, ge=MIN_PART_MB)

    @field_validator("students")
    @classmethod
    def _names(cls, students: dict[str, str]) -> dict[str, str]:
        for model, name in students.items():
            if not PUBLISHED_NAME.fullmatch(name):
                raise ValueError(f"{model}: published name {name!r}: use lowercase letters, digits, '.', '_' and '-'")
        if len(set(students.values())) < len(students):
            raise ValueError("two models have the same published name")
        return students

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, aliases: list[str]) -> list[str]:
        for alias in aliases:
            if not ALIAS_NAME.fullmatch(alias) or alias == "latest":
                raise ValueError(f"alias {alias!r}: use lowercase letters, digits, '_' and '-' "
                                 "(latest is always moved)")
        return aliases

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        return prefix.strip("/")

    @model_validator(mode="after")
    def _bucket_when_enabled(self) -> PublishParams:
        if self.enabled and not self.bucket:
            raise ValueError("publishing is enabled but no bucket is set: give publish.bucket")
        return self

    @property
    def part_size(self) -> int:
        return self.part_size_mb * MiB

    @property
    def multipart_threshold(self) -> int:
        return self.multipart_threshold_mb * MiB
