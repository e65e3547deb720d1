"""Publishing students to S3 and fetching them back (pipelines/publish.py, pipelines/fetch.py, pipelines/registry/).

Each round trip runs against moto's server and against OpenStack Swift's s3api (tests/swift_server.py), a
real object store on loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import onnxruntime
import pytest
import torch

from pipelines.config import load_params
from pipelines.core.paths import Paths
from pipelines.engine.checkpoint import load_model, save_checkpoint
from pipelines.distill import distill
from pipelines.evaluate import evaluate
from pipelines.fetch import listing
from pipelines.models import build_model
from pipelines.publish import publish
from pipelines.registry.download import fetch_student
from pipelines.registry.manifest import MANIFEST, MODEL, Layout, RegistryError
from pipelines.storage import ObjectStore, StorageError, make_client
from tests.conftest import PROJECT_ROOT, SHIPPED_PARAMS, TINY_OVERRIDES
from tasks.params import write_overrides
from tests.s3_server import S3Server, _free_port

# The tiny run, with a student_kd big enough to learn the digits in a few seconds (about 97% test accuracy),
# so that an untrained copy of it is clearly worse.
OVERRIDES = {**TINY_OVERRIDES, "distill.student_kd.train.epochs": 3,
             "distill.student_kd.model": {"arch": "cnn", "width": 8, "depth": 2, "dropout": 0.0, "blocks_per_stage": 2}}


@pytest.fixture
def server(object_store: S3Server) -> S3Server:
    """moto's server, then Swift (tests/conftest.py's object_store)."""
    return object_store


@pytest.fixture(scope="module")
def evaluated(trained_pipeline, tmp_path_factory: pytest.TempPathFactory) -> Paths:
    """The session's tiny trained pipeline with student_kd distilled again (OVERRIDES), evaluated, in a folder of
    this module's."""
    _, trained = trained_pipeline
    paths = Paths(tmp_path_factory.mktemp("evaluated"))
    shutil.copytree(trained.root, paths.root, dirs_exist_ok=True)
    params = load_params(SHIPPED_PARAMS, OVERRIDES)
    distill(params, paths)
    evaluate(params, paths)
    return paths


@pytest.fixture
def project(evaluated: Paths, tmp_path: Path) -> Paths:
    """A copy of the evaluated pipeline that one test may change."""
    paths = Paths(tmp_path / "project")
    shutil.copytree(evaluated.root, paths.root)
    return paths


def settings(server: S3Server, bucket: str, **changes):
    """The shipped params (tiny), publishing to `bucket` of `server`; without the torch.export program (a few
    seconds a publish) but where a test asks for it."""
    return load_params(SHIPPED_PARAMS, {**OVERRIDES, "publish.enabled": True, "publish.bucket": bucket,
                                        "publish.export": False, "storage.endpoint_url": server.endpoint_url,
                                        **changes})


def store(server: S3Server, bucket: str) -> ObjectStore:
    return ObjectStore(server.client(), bucket)


def keys(server: S3Server, bucket: str) -> dict[str, str]:
    """Every object of the bucket: key -> ETag (changes whenever an object is written again)."""
    listed = server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return {item["Key"]: item["ETag"] for item in listed}


def make_worse(paths: Paths, model: str = "student_kd") -> None:
    """Replace `model` by an untrained network of the same shape and measure it (evaluate), as a bad retrain."""
    _, checkpoint = load_model(paths.model(model))
    torch.manual_seed(1)
    save_checkpoint(paths.model(model), build_model(checkpoint.model_config).state_dict(), checkpoint.model_config, {})
    evaluate(load_params(SHIPPED_PARAMS, OVERRIDES), paths)


def test_publishing_is_off_by_default_and_sends_nothing(project: Paths) -> None:
    record = publish(load_params(SHIPPED_PARAMS, OVERRIDES), project)
    assert record == {"enabled": False, "students": {}}
    assert json.loads(project.publish_record.read_text()) == record


@pytest.mark.integration
def test_publish_then_fetch_round_trip_verifies_every_file(server: S3Server, project: Paths, tmp_path: Path) -> None:
    bucket = server.make_bucket()
    record = publish(settings(server, bucket, **{"publish.export": True}), project)

    decision = record["students"]["student_kd"]
    assert decision["action"] == "published" and decision["aliases"] == ["latest", "staging"]
    version = decision["version"]
    assert version == hashlib.sha256(project.model("student_kd").read_bytes()).hexdigest()[:16]
    manifest = json.loads(server.client().get_object(
        Bucket=bucket, Key=f"students/student-kd/{version}/{MANIFEST}")["Body"].read())
    assert {entry["file"] for entry in manifest["objects"]} == {"model.pt", "model_config.json", "model.pt2",
                                                                "model.onnx", "card.md"}
    assert set(keys(server, bucket)) == {
        f"students/student-kd/{version}/{entry['file']}" for entry in manifest["objects"]} | {
        f"students/student-kd/{version}/{MANIFEST}", "students/student-kd/aliases/latest.json",
        "students/student-kd/aliases/staging.json"}
    assert manifest["metrics"]["accuracy"] == json.loads(project.eval_metrics.read_text())["student_kd"]["accuracy"]

    fetched = fetch_student(store(server, bucket), Layout("students", "student-kd"), "latest", tmp_path / "fetched")
    assert fetched.folder == tmp_path / "fetched" / "student-kd" / version
    assert (fetched.folder / MODEL).read_bytes() == project.model("student_kd").read_bytes()
    images = torch.rand(5, 1, 8, 8)
    local, _ = load_model(project.model("student_kd"))
    assert torch.equal(fetched.model(images), local(images))
    exported = torch.export.load(fetched.folder / "model.pt2").module()  # what a server without this code loads
    assert torch.allclose(exported(images), local(images), atol=1e-5)
    session = onnxruntime.InferenceSession(str(fetched.folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert torch.allclose(torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0]), local(images),
                          atol=1e-4)  # and what a server without torch loads
    card = (fetched.folder / "card.md").read_text()
    assert f"# student-kd {version}" in card and "| accuracy |" in card and "teacher" in card


@pytest.mark.integration
def test_publishing_the_same_student_again_uploads_nothing(server: S3Server, project: Paths) -> None:
    bucket = server.make_bucket()
    first = publish(settings(server, bucket), project)["students"]["student_kd"]
    before = keys(server, bucket)

    again = publish(settings(server, bucket), project)["students"]["student_kd"]
    assert again["action"] == "unchanged" and again["version"] == first["version"]
    assert again["uploaded_files"] == 0 and again["uploaded_bytes"] == 0
    assert keys(server, bucket) == before  # not one object written again


@pytest.mark.integration
def test_a_worse_student_is_not_published_and_the_decision_names_both_figures(server: S3Server, project: Paths) -> None:
    bucket = server.make_bucket()
    good = publish(settings(server, bucket), project)["students"]["student_kd"]
    before = keys(server, bucket)

    make_worse(project)
    kept = publish(settings(server, bucket), project)["students"]["student_kd"]
    assert kept["action"] == "kept" and kept["uploaded_files"] == 0
    assert kept["candidate"] < kept["published"] == good["candidate"]
    assert kept["published_version"] == good["version"] and kept["compared_on"] == "the same test split"
    assert keys(server, bucket) == before
    assert json.loads(project.publish_record.read_text())["students"]["student_kd"] == kept


@pytest.mark.integration
def test_a_better_student_moves_latest_and_the_aliases_and_promote_moves_production(
        server: S3Server, project: Paths, tmp_path: Path) -> None:
    bucket = server.make_bucket()
    trained = project.model("student_kd").read_bytes()
    make_worse(project)
    worse = publish(settings(server, bucket), project)["students"]["student_kd"]
    publish(settings(server, bucket), project, promote=["student-kd", "latest", "production"])

    project.model("student_kd").write_bytes(trained)
    evaluate(load_params(SHIPPED_PARAMS, OVERRIDES), project)
    better = publish(settings(server, bucket), project)["students"]["student_kd"]
    assert better["action"] == "published" and better["published_version"] == worse["version"]
    assert better["candidate"] > better["published"]

    def points_at(alias: str) -> str:
        layout = Layout("students", "student-kd")
        return fetch_student(store(server, bucket), layout, alias, tmp_path / alias).manifest.version

    assert points_at("latest") == points_at("staging") == better["version"]
    assert points_at("production") == worse["version"]  # production moves only when promoted
    publish(settings(server, bucket), project, promote=["student-kd", "staging", "production"])
    assert points_at("production") == better["version"]

    header, first, second = listing("student-kd", bucket, "students").splitlines()  # fetch --list
    assert header.split() == ["version", "accuracy", "created", "(UTC)", "aliases"]
    assert first.startswith(f"{worse['version']}  {worse['candidate']:>8.4f}") and first.endswith("  ")
    assert second.startswith(f"{better['version']}  {better['candidate']:>8.4f}")
    assert second.endswith("  latest, production, staging")
    assert listing("student-kd", bucket, "other") == f"nothing is published as 'student-kd' under s3://{bucket}/other/"


@pytest.mark.integration
@pytest.mark.parametrize("damage", ["changed", "cut short", "missing"])
def test_a_damaged_object_is_refused_on_fetch_naming_it(server: S3Server, project: Paths, tmp_path: Path,
                                                        damage: str) -> None:
    bucket = server.make_bucket()
    version = publish(settings(server, bucket), project)["students"]["student_kd"]["version"]
    key = f"students/student-kd/{version}/{MODEL}"
    body = project.model("student_kd").read_bytes()
    if damage == "changed":
        server.client().put_object(Bucket=bucket, Key=key, Body=body[:-1] + bytes([body[-1] ^ 1]))
    elif damage == "cut short":
        server.client().put_object(Bucket=bucket, Key=key, Body=body[: len(body) // 2])
    else:
        server.client().delete_object(Bucket=bucket, Key=key)

    with pytest.raises(RegistryError, match=f"s3://{bucket}/{key}: " + {"changed": "SHA-256", "cut short": r"\d+ bytes",
                                                                       "missing": "missing"}[damage]):
        fetch_student(store(server, bucket), Layout("students", "student-kd"), "latest", tmp_path / "fetched")
    assert not (tmp_path / "fetched" / "student-kd" / version).exists()  # nothing half-downloaded is left


@pytest.mark.integration
def test_a_manifest_changed_to_match_a_changed_model_is_refused(server: S3Server, project: Paths,
                                                                tmp_path: Path) -> None:
    bucket = server.make_bucket()
    version = publish(settings(server, bucket), project)["students"]["student_kd"]["version"]
    key = f"students/student-kd/{version}/{MANIFEST}"
    manifest = json.loads(server.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    manifest["metrics"]["accuracy"] = 1.0
    server.client().put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest).encode())

    with pytest.raises(RegistryError, match="changed after it was published"):
        fetch_student(store(server, bucket), Layout("students", "student-kd"), "latest", tmp_path / "fetched")


@pytest.mark.integration
def test_fetch_needs_neither_dvc_nor_git(server: S3Server, project: Paths, tmp_path: Path) -> None:
    bucket = server.make_bucket()
    version = publish(settings(server, bucket), project)["students"]["student_kd"]["version"]
    blocked = ("import sys; sys.modules.update(dvc=None, dvclive=None, git=None); "
               "from pipelines.fetch import main; main()")
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), PATH="/nonexistent")  # no git, no dvc on PATH either
    result = subprocess.run(
        [sys.executable, "-c", blocked, "student-kd", "staging", "--bucket", bucket, "--dest",
         str(tmp_path / "models")],
        cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"student-kd {version} (staging): 3 files verified" in result.stdout
    assert ((tmp_path / "models" / "student-kd" / version / MODEL).read_bytes()
            == project.model("student_kd").read_bytes())


@pytest.mark.integration
def test_fetching_an_unknown_alias_names_the_published_ones(server: S3Server, project: Paths, tmp_path: Path) -> None:
    bucket = server.make_bucket()
    publish(settings(server, bucket), project)
    with pytest.raises(RegistryError, match="no alias 'production' of 'student-kd' \\(its aliases: latest, staging\\)"):
        fetch_student(store(server, bucket), Layout("students", "student-kd"), "production", tmp_path)


@pytest.mark.integration
@pytest.mark.swift
def test_wrong_credentials_are_a_clear_error_that_shows_no_secret(swift_server: S3Server, project: Paths) -> None:
    server = swift_server  # moto accepts any signature; Swift checks it, as S3 does
    bucket = server.make_bucket()
    secret = "not-the-secret-4f1d9a7e"
    params_file = project.root / "params.yaml"
    shutil.copy2(SHIPPED_PARAMS, params_file)
    write_overrides(params_file, {**OVERRIDES, "publish.enabled": True, "publish.bucket": bucket,
                                  "storage.endpoint_url": server.endpoint_url})
    env = {**os.environ, **server.env, "AWS_SECRET_ACCESS_KEY": secret, "PYTHONPATH": str(PROJECT_ROOT)}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pipelines.publish", "--root", str(project.root),
                             "--params", str(params_file)], env=env, capture_output=True, text=True, cwd=project.root)
    assert result.returncode == 1
    assert "refused the credentials" in result.stderr and "AWS_SECRET_ACCESS_KEY" in result.stderr
    assert secret not in result.stdout + result.stderr
    assert time.monotonic() - started < 60
    assert not project.publish_record.exists()


@pytest.mark.integration  # publish records the checkout's commit: git
def test_no_credentials_at_all_is_a_clear_error(project: Paths, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError, match="no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        publish(settings(S3Server(f"http://127.0.0.1:{_free_port()}"), "bucket"), project)


@pytest.mark.integration
def test_a_missing_bucket_is_a_clear_error(server: S3Server, project: Paths) -> None:
    with pytest.raises(StorageError, match="s3://no-such-bucket-here/: no such bucket at"):
        publish(settings(server, "no-such-bucket-here"), project)


@pytest.mark.integration  # publish records the checkout's commit: git
def test_an_unreachable_store_fails_in_bounded_time_and_changes_nothing(project: Paths,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    nowhere = S3Server(f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    for name, value in nowhere.env.items():
        monkeypatch.setenv(name, value)
    params = settings(nowhere, "bucket", **{"storage.max_attempts": 3,
                                                                               "storage.connect_timeout_s": 1})
    model_before = project.model("student_kd").read_bytes()
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"did not answer \(EndpointConnectionError, 3 attempts\)"):
        publish(params, project)
    assert time.monotonic() - started < 30
    assert project.model("student_kd").read_bytes() == model_before and not project.publish_record.exists()


def test_the_client_takes_retries_timeouts_and_addressing_from_params() -> None:
    params = load_params(SHIPPED_PARAMS, {"storage.max_attempts": 7, "storage.retry_mode": "adaptive",
                                          "storage.addressing_style": "path", "storage.read_timeout_s": 12.5,
                                          "storage.endpoint_url": "http://127.0.0.1:1", "storage.region": "eu-west-1"})
    client = make_client(params.storage)
    assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 7}  # the first try and 6 retries
    assert client.meta.config.s3["addressing_style"] == "path" and client.meta.config.read_timeout == 12.5
    assert client.meta.endpoint_url == "http://127.0.0.1:1" and client.meta.region_name == "eu-west-1"


def make_big(paths: Paths, width: int = 192) -> None:
    """Replace student_kd by an untrained but wide network (about 9 MB: two 5 MiB parts), and measure it."""
    from dataclasses import replace

    _, checkpoint = load_model(paths.model("student_kd"))
    config = replace(checkpoint.model_config, width=width)
    torch.manual_seed(2)
    save_checkpoint(paths.model("student_kd"), build_model(config).state_dict(), config, {})
    evaluate(load_params(SHIPPED_PARAMS, OVERRIDES), paths)


@pytest.mark.integration
@pytest.mark.swift
def test_the_store_stopped_mid_upload_fails_in_bounded_time_and_the_next_publish_completes(
        swift_server, project: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.publish as stage

    for name, value in swift_server.env.items():
        monkeypatch.setenv(name, value)
    make_big(project)
    model_file = project.model("student_kd").read_bytes()
    bucket = swift_server.make_bucket()
    params = settings(swift_server, bucket, **{"publish.multipart_threshold_mb": 5, "publish.part_size_mb": 5,
                                               "storage.max_attempts": 3, "storage.connect_timeout_s": 2})
    parts_sent = []

    def stop_after_the_first_part(key: str, sent: int, size: int) -> None:
        parts_sent.append((key, sent))
        if key.endswith(MODEL) and sent < size:
            swift_server.stop()  # the store goes away with the upload half done

    monkeypatch.setattr(stage, "log_progress", stop_after_the_first_part)
    started = time.monotonic()
    try:
        with pytest.raises(StorageError,
                           match=rf"{MODEL} \(part 2\): the S3 endpoint .* did not answer \(.*, 3 attempts\)"):
            publish(params, project)
        assert time.monotonic() - started < 60  # bounded: three tries with backoff, short timeouts
    finally:
        swift_server.start()
    assert project.model("student_kd").read_bytes() == model_file and not project.publish_record.exists()
    assert not [key for key in keys(swift_server, bucket) if key.endswith((MANIFEST, "latest.json"))]  # not published

    monkeypatch.setattr(stage, "log_progress", lambda key, sent, size: None)
    decision = publish(params, project)["students"]["student_kd"]
    assert decision["action"] == "published"
    stored = swift_server.client().head_object(Bucket=bucket, Key=f"students/student-kd/{decision['version']}/{MODEL}")
    assert stored["ContentLength"] == len(model_file) > 5 * 2**20 and stored["ETag"].strip('"').endswith("-2")
    fetched = fetch_student(store(swift_server, bucket), Layout("students", "student-kd"), "latest", tmp_path)
    assert (fetched.folder / MODEL).read_bytes() == model_file



@pytest.mark.integration
def test_the_gate_re_scores_the_published_version_on_a_different_test_split(s3_env: S3Server, project: Paths) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    from tests.conftest import read_image_set

    bucket = s3_env.make_bucket()
    first = publish(settings(s3_env, bucket), project)["students"]["student_kd"]
    published_model, _ = load_model(project.model("student_kd"))

    # This run's test split holds other images (its last two thirds), and its student is worse.
    table = pq.read_table(project.split("test"))
    table = table.slice(len(table) // 3)
    pq.write_table(table, project.split("test"))
    pixels = np.asarray(table.column("image").combine_chunks().flatten(), np.uint8)
    labels = np.asarray(table.column("label"), "<i8")
    card = json.loads(project.card.read_text())
    card["splits"]["test"]["sha256"] = hashlib.sha256(pixels.tobytes() + labels.tobytes()).hexdigest()
    project.card.write_text(json.dumps(card))
    shutil.rmtree(project.arrow_cache, ignore_errors=True)
    make_worse(project)

    kept = publish(settings(s3_env, bucket), project)["students"]["student_kd"]
    test = read_image_set(project.split("test"))
    with torch.no_grad():
        predicted = published_model(test.images.float() / 255).argmax(1)
    assert kept["action"] == "kept" and kept["published_version"] == first["version"]
    assert kept["compared_on"] == "this run's test split (the published version re-scored)"
    assert kept["published"] == pytest.approx(float((predicted == test.labels).float().mean()), abs=1e-6)
    assert kept["candidate"] == json.loads(project.eval_metrics.read_text())["student_kd"]["accuracy"]


@pytest.mark.integration
def test_the_flow_posts_each_decision_as_a_prefect_artifact(prefect_server, s3_env: S3Server, project: Paths) -> None:
    from prefect import flow
    from prefect.artifacts import Artifact

    from tasks.publish import post_publish_decisions

    bucket = s3_env.make_bucket()
    decision = publish(settings(s3_env, bucket), project)["students"]["student_kd"]

    @flow
    def post(root: Path) -> dict:
        return post_publish_decisions(root)

    post(project.root)
    [row] = json.loads(Artifact.get("publish-decisions").data)
    assert row["name"] == "student-kd" and row["action"] == "published" and row["version"] == decision["version"]
    assert row["candidate"] == decision["candidate"] and row["uri"] == f"s3://{bucket}/students/student-kd/{decision['version']}/"

