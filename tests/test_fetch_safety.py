"""What a fetch takes from the bucket is checked before it is used (pipelines/registry/, pipelines/fetch.py).

Anyone who can write to the bucket could write a manifest, an alias or a key: whatever its contents, a
fetch writes only inside <dest>/<name>/<version>/, and refuses anything else with the project's own error
(RegistryError, a DataError: exit 1) before it writes anything. The property tests check the rules alone;
the others run `python -m pipelines.fetch`'s main against moto's S3 server.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.engine.checkpoint import save_checkpoint
from pipelines.fetch import main
from pipelines.models import ModelConfig, build_model
from pipelines.registry.download import list_aliases
from pipelines.registry.manifest import (MANIFEST, MODEL, Alias, Entry, Layout, Manifest, RegistryError, is_alias,
                                         is_file_name, is_version)
from pipelines.storage import ObjectStore
from tests.s3_server import S3Server

NAME, PREFIX = "student-kd", "students"
QUICK = settings(max_examples=300, deadline=None, database=None)  # about a second each; no example database

# Pieces that make paths, escapes and look-alikes; joined at random, with arbitrary text besides.
PIECES = ["..", ".", "/", "\\", "\x00", "\n", "a", "model.pt", MANIFEST, "MANIFEST.JSON", "C:", "~", " ", "é", "-"]
names = st.one_of(st.text(max_size=40), st.lists(st.sampled_from(PIECES), max_size=8).map("".join))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_json(files: list[Entry], version: str = "0" * 16, name: str = NAME) -> bytes:
    return Manifest(name, version, "student_kd", files, {"accuracy": 0.9}, "0" * 64,
                    created_at="2026-01-01T00:00:00+00:00").to_json()


def model_entry(version: str = "0" * 16) -> Entry:
    return Entry(MODEL, 10, version + "0" * 48)


# --- the rules alone -----------------------------------------------------------------------------


@QUICK
@given(names)
def test_a_file_name_the_rule_accepts_is_a_file_directly_in_the_version_folder(name: str) -> None:
    folder = Path("/srv/models/student-kd/0123456789abcdef")
    if is_file_name(name):
        assert (folder / name).parent == folder and (folder / name).name == name
        assert Path(os.path.normpath(folder / name)).parent == folder  # no '..' or '.' that resolves elsewhere
        assert not {"/", "\\", "\x00"} & set(name) and name.casefold() != MANIFEST


@QUICK
@given(st.lists(names, max_size=5))
def test_any_manifest_file_list_is_refused_or_holds_distinct_plain_file_names(files: list[str]) -> None:
    data = manifest_json([model_entry(), *(Entry(file, 1, "a" * 64) for file in files)])
    try:
        manifest = Manifest.from_json(data, "s3://bucket/manifest.json")
    except RegistryError as error:
        assert "refusing the version (nothing was downloaded)" in str(error)
        return
    listed = [entry.file for entry in manifest.objects]
    assert all(is_file_name(file) for file in listed)
    assert len({file.casefold() for file in listed}) == len(listed)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                           lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.text(max_size=10), children, max_size=3), max_leaves=10)


@QUICK
@given(st.dictionaries(st.sampled_from(["name", "version", "model", "objects", "metrics", "test_split_sha256",
                                        "source", "created_at", "left_out", "format", "other"]), json_values))
def test_any_manifest_json_is_read_or_refused_with_a_registry_error(raw: dict) -> None:
    try:
        manifest = Manifest.from_json(json.dumps(raw).encode(), "s3://bucket/manifest.json")
    except RegistryError:
        return
    assert is_version(manifest.version) and not manifest.problems()


@QUICK
@given(st.dictionaries(st.sampled_from(["version", "manifest_sha256", "moved_at", "other"]), json_values | names))
def test_any_alias_json_is_read_or_refused_with_a_registry_error(raw: dict) -> None:
    try:
        alias = Alias.from_json(json.dumps(raw).encode(), "s3://bucket/aliases/latest.json")
    except RegistryError:
        return
    assert is_version(alias.version)


@QUICK
@given(names, names)
def test_a_published_name_and_an_alias_are_one_folder_level_or_refused(name: str, alias: str) -> None:
    dest = Path("/srv/models")
    try:
        layout = Layout(PREFIX, name)
    except RegistryError:
        layout = None
    if layout is not None:
        assert Path(os.path.normpath(dest / layout.name / "0123456789abcdef")).parent.parent == dest
    if is_alias(alias):
        assert layout is None or layout.alias_key(alias) == f"{PREFIX}/{name}/aliases/{alias}.json"
        assert alias.isascii() and "/" not in alias and "." not in alias


@pytest.mark.parametrize("file, message", [
    ("../../../x", r"it lists '\.\./\.\./\.\./x', which is not a file name of a version"),
    ("/abs/x", "it lists '/abs/x', which is not a file name"),
    ("sub/model.pt", "it lists 'sub/model.pt', which is not a file name"),
    ("..\\x", r"it lists '\.\.\\\\x', which is not a file name"),
    ("", "it lists '', which is not a file name"),
    (".", r"it lists '\.', which is not a file name"),
    ("a\x00b", r"it lists 'a\\x00b', which is not a file name"),
    (MANIFEST, "it lists 'manifest.json', which is not a file name"),
    ("MODEL.PT", "it lists 'MODEL.PT' twice"),
])
def test_a_manifest_listing_a_path_or_a_name_twice_is_refused_naming_it(file: str, message: str) -> None:
    data = manifest_json([model_entry(), Entry(file, 1, "a" * 64)])
    with pytest.raises(RegistryError, match=rf"^s3://b/m\.json: {message}.*: refusing the version \(nothing was "
                                            rf"downloaded\)$"):
        Manifest.from_json(data, "s3://b/m.json")


@pytest.mark.parametrize("field, value, message", [
    ("version", "../../x", r"version '\.\./\.\./x' is not 16 hex digits"),
    ("name", "../x", r"name '\.\./x' is not a published name"),
    ("metrics", {"accuracy": "high"}, "metrics is not a mapping of names to numbers"),
    ("left_out", {"model.onnx": 1}, "left_out is not a mapping of file names to reasons"),
    ("left_out", ["model.onnx"], "left_out is not a mapping of file names to reasons"),
])
def test_a_manifest_whose_name_version_or_metrics_are_malformed_is_refused(field: str, value, message: str) -> None:
    raw = json.loads(manifest_json([model_entry()]))
    raw[field] = value
    with pytest.raises(RegistryError, match=message):
        Manifest.from_json(json.dumps(raw).encode(), "s3://b/m.json")


def test_a_manifest_of_format_1_without_left_out_is_read_and_a_newer_format_refused() -> None:
    raw = json.loads(manifest_json([model_entry()]))
    del raw["left_out"]
    assert Manifest.from_json(json.dumps({**raw, "format": 1}).encode(), "s3://b/m.json").left_out == {}
    with pytest.raises(RegistryError, match="manifest format 3 is newer than this code reads"):
        Manifest.from_json(json.dumps({**raw, "format": 3}).encode(), "s3://b/m.json")


def test_an_alias_pointing_at_a_path_is_refused() -> None:
    data = json.dumps({"version": "../../../etc", "manifest_sha256": "0" * 64}).encode()
    with pytest.raises(RegistryError, match=r"s3://b/latest\.json: not an alias of a published student \(version "
                                            r"'\.\./\.\./\.\./etc'"):
        Alias.from_json(data, "s3://b/latest.json")


# --- against a real S3 server --------------------------------------------------------------------


def checkpoint_bytes(tmp_path: Path, seed: int) -> bytes:
    """A real model.pt of a tiny cnn (what `fetch` loads after verifying it)."""
    torch.manual_seed(seed)
    config = ModelConfig(arch="cnn", width=2, depth=1, blocks_per_stage=1, dropout=0.0, in_channels=1,
                         image_size=(8, 8), num_classes=3, pixel_mean=(0.5,), pixel_std=(0.3,))
    save_checkpoint(tmp_path / f"model-{seed}.pt", build_model(config).state_dict(), config, {})
    return (tmp_path / f"model-{seed}.pt").read_bytes()


def put_version(server: S3Server, bucket: str, files: dict[str, bytes], listed: list[Entry] | None = None) -> str:
    """A version as the publisher writes it, or as anyone who can write to the bucket could: each file, a
    manifest listing `listed` (default: the files), and `latest` pointing at it. Returns the version."""
    client, version = server.client(), sha256(files[MODEL])[:16]
    for file, body in files.items():
        client.put_object(Bucket=bucket, Key=f"{PREFIX}/{NAME}/{version}/{file}", Body=body)
    manifest = manifest_json(listed or [Entry(file, len(body), sha256(body)) for file, body in files.items()], version)
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{NAME}/{version}/{MANIFEST}", Body=manifest)
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{NAME}/aliases/latest.json",
                      Body=Alias(version, sha256(manifest)).to_json())
    return version


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes), and every folder (-> b"<dir>")."""
    return {str(path.relative_to(root)): b"<dir>" if path.is_dir() else path.read_bytes() for path in root.rglob("*")}


@pytest.fixture
def here(tmp_path: Path, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder without params.yaml (fetch then uses the shipped defaults), as the current one."""
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.chdir(root)
    return root


@pytest.mark.integration
@pytest.mark.parametrize("evil", ["../../../x", "ABSOLUTE"])
def test_a_manifest_entry_outside_the_version_is_refused_and_nothing_is_written(
        s3_env: S3Server, here: Path, tmp_path: Path, capsys: pytest.CaptureFixture, evil: str) -> None:
    evil = str(here / "abs" / "x") if evil == "ABSOLUTE" else evil
    bucket, dest = s3_env.make_bucket(), here / "srv" / "models"
    good = put_version(s3_env, bucket, {MODEL: checkpoint_bytes(tmp_path, 0)})
    main([NAME, "--bucket", bucket, "--dest", str(dest)])
    assert f"{NAME} {good} (latest): 1 files verified" in capsys.readouterr().out
    before = tree(here)

    model, payload = checkpoint_bytes(tmp_path, 1), b"written by whoever can write to the bucket\n"
    put_version(s3_env, bucket, {MODEL: model, evil: payload})  # the bucket holds the key, as the manifest says
    with pytest.raises(SystemExit) as exit_code:
        main([NAME, "--bucket", bucket, "--dest", str(dest)])

    assert exit_code.value.code == 1
    error = capsys.readouterr().err
    assert f"it lists {evil!r}, which is not a file name of a version" in error
    assert "refusing the version (nothing was downloaded)" in error and "Traceback" not in error
    assert tree(here) == before  # the good version byte-identical; no new version, no staging folder, no `x`


@pytest.mark.integration
@pytest.mark.parametrize("argv, message", [
    (["../x"], r"published name '../x': use lowercase letters"),
    (["/abs"], r"published name '/abs': use lowercase letters"),
    ([NAME, "../../x"], r"'../../x': neither a 16-digit version nor an alias name"),
])
def test_a_published_name_or_ref_that_is_a_path_is_refused_before_s3_is_asked(
        here: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_code:
        main([*argv, "--bucket", "no-such-bucket", "--dest", str(here / "models")])
    assert exit_code.value.code == 1
    assert message in capsys.readouterr().err
    assert tree(here) == {}


@pytest.mark.integration
def test_keys_under_aliases_that_are_not_alias_names_are_passed_over(s3_env: S3Server, here: Path,
                                                                     tmp_path: Path) -> None:
    bucket = s3_env.make_bucket()
    put_version(s3_env, bucket, {MODEL: checkpoint_bytes(tmp_path, 0)})
    for junk in ["../../evil.json", "sub/evil.json", "Bad Name.json", "notes.txt", "\x1b[31mred.json"]:
        s3_env.client().put_object(Bucket=bucket, Key=f"{PREFIX}/{NAME}/aliases/{junk}", Body=b"{}")
    assert list_aliases(ObjectStore(s3_env.client(), bucket), Layout(PREFIX, NAME)) == ["latest"]


@pytest.mark.integration
def test_an_alias_in_the_bucket_pointing_outside_is_refused(s3_env: S3Server, here: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    bucket = s3_env.make_bucket()
    s3_env.client().put_object(Bucket=bucket, Key=f"{PREFIX}/{NAME}/aliases/latest.json",
                               Body=json.dumps({"version": "../../../x", "manifest_sha256": "0" * 64}).encode())
    with pytest.raises(SystemExit) as exit_code:
        main([NAME, "--bucket", bucket, "--dest", str(here / "models")])
    assert exit_code.value.code == 1
    assert f"s3://{bucket}/{PREFIX}/{NAME}/aliases/latest.json: not an alias" in capsys.readouterr().err
    assert tree(here) == {}


@pytest.mark.integration
def test_a_manifest_of_another_name_is_refused(s3_env: S3Server, here: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    bucket, model = s3_env.make_bucket(), checkpoint_bytes(tmp_path, 0)
    version = put_version(s3_env, bucket, {MODEL: model})
    manifest = manifest_json([Entry(MODEL, len(model), sha256(model))], version, name="other")
    s3_env.client().put_object(Bucket=bucket, Key=f"{PREFIX}/{NAME}/{version}/{MANIFEST}", Body=manifest)
    with pytest.raises(SystemExit):
        main([NAME, version, "--bucket", bucket, "--dest", str(here / "models")])
    assert "describes 'other', not 'student-kd': refusing to use it" in capsys.readouterr().err
    assert tree(here) == {}
