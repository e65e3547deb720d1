"""The HTML report (reports/report.html): one page that fetches nothing, each figure drawn from what eval.json
and the training logs recorded, and the page as a real browser (headless Chromium) shows it."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from pipelines.core.errors import DataError
from pipelines.core.paths import Paths
from pipelines.evaluate import evaluate
from pipelines.evaluation.html_report import read_inputs, read_training_log, render_html
from pipelines.readme_figure import readme_figure
from pipelines.report import report
from tests.conftest import PROJECT_ROOT

# The figures of the shipped params' models (one distilled student, student_kd), by their anchor on the page.
FIGURES = ["training-curves", "loss-terms-student_kd", "tradeoffs", "per-class-f1-student_kd", "confusion",
           "agreement"]

ARTIFACTS = PROJECT_ROOT / "test-artifacts"  # git-ignored: what a person looks at after the tests


@pytest.fixture(scope="module")
def reported(trained_pipeline, tmp_path_factory):
    """The shared tiny run copied to a fresh root, evaluated and reported there: (params, paths)."""
    params, shared = trained_pipeline
    paths = Paths(tmp_path_factory.mktemp("reported") / "root")
    shutil.copytree(shared.root, paths.root)
    evaluate(params, paths)
    report(params, paths)
    return params, paths


def figure_images(page: str) -> dict[str, str]:
    """Each figure's anchor and the data URI of its image."""
    return dict(re.findall(r'<figure id="figure-([^"]+)"><img src="([^"]+)"', page))


class Attributes(HTMLParser):
    """Every tag and attribute value of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.values: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.values += [value for _, value in attrs if value is not None]


def test_the_page_holds_every_figure_and_fetches_nothing(reported):
    _, paths = reported
    page = paths.report_html.read_text()
    parsed = Attributes()
    parsed.feed(page)
    assert list(figure_images(page)) == FIGURES
    assert all(uri.startswith("data:image/png;base64,") for uri in figure_images(page).values())
    assert not {"script", "link", "iframe", "object", "embed"} & set(parsed.tags)  # nothing runs, nothing loads
    assert not [value for value in parsed.values if re.search(r"https?://|^//", value)]
    assert "url(" not in page and "@import" not in page  # the inline style loads nothing either


def test_the_page_shows_the_comparison_of_the_markdown_report(reported):
    _, paths = reported
    page, markdown = paths.report_html.read_text(), paths.report.read_text()
    gain_line = next(line for line in markdown.splitlines() if line.startswith("Distillation (student_kd)"))
    assert f"<li>{html.escape(gain_line)}</li>" in page  # the gain and the gap recovered, as computed there
    row = next(line for line in markdown.splitlines() if line.startswith("| student_kd |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>" in page


def test_the_training_curves_are_those_of_the_dvclive_logs(reported):
    _, paths = reported
    curves = read_training_log(paths.training_log("student_kd"))
    summary = json.loads((paths.training_log("student_kd") / "metrics.json").read_text())
    assert {"train_loss", "train_kd", "train_kd_2", "val_loss", "val_accuracy"} == set(curves)  # kd at T = 8, T = 1
    for metric, (epochs, values) in curves.items():
        assert epochs == list(range(1, summary["epochs"] + 1))
        assert values[-1] == summary[metric]


def test_the_readme_s_picture_is_the_page_s_training_curves_figure(reported, tmp_path):
    # make readme-figure draws docs/report_training.png this way, from a run of the shipped params
    params, paths = reported
    picture = readme_figure(params, paths, out=tmp_path / "docs" / "report_training.png").read_bytes()
    page = figure_images(paths.report_html.read_text())
    assert picture.startswith(b"\x89PNG")
    assert picture == base64.b64decode(page["training-curves"].removeprefix("data:image/png;base64,"))


def test_a_model_without_a_training_log_is_an_error_that_names_its_folder(reported, tmp_path):
    params, paths = reported
    root = Paths(tmp_path)
    shutil.copytree(paths.root / "metrics", root.root / "metrics")
    shutil.copytree(paths.prepared, root.prepared)
    shutil.rmtree(root.training_log("teacher"))
    with pytest.raises(DataError, match=f"{root.training_log('teacher')}: no training log"):
        read_inputs(root, params)


# What each figure is drawn from: one recorded value changed, and only the figure showing it changes.
CHANGES = {
    "per-class-f1-student_kd": lambda results, logs: results["student_kd"]["per_class"]["3"].update(f1=0.77),
    "confusion": lambda results, logs: results["teacher"]["confusion_matrix"][0].__setitem__(0, 99),
    "agreement": lambda results, logs: results["student_kd"]["agreement_per_class"].update({"5": 0.5}),
    "tradeoffs": lambda results, logs: results["student_baseline"].update(params=10_000),
    "training-curves": lambda results, logs: logs["teacher"]["val_accuracy"][1].__setitem__(0, 0.99),
    "loss-terms-student_kd": lambda results, logs: logs["student_kd"]["train_kd"][1].__setitem__(0, 9.0),
}


@pytest.mark.parametrize("figure", list(CHANGES))
def test_each_figure_is_drawn_from_the_recorded_values_it_shows(reported, figure):
    params, paths = reported
    results, logs, card = read_inputs(paths, params)
    before = figure_images(paths.report_html.read_text())
    CHANGES[figure](results, logs)
    after = figure_images(render_html(results, logs, card, params))
    assert [name for name in FIGURES if before[name] != after[name]] == [figure]


def test_a_value_changed_in_eval_json_shows_in_the_page(reported, tmp_path):
    params, paths = reported
    root = Paths(tmp_path / "root")
    shutil.copytree(paths.root, root.root)
    results = json.loads(root.eval_metrics.read_text())
    results["student_kd"]["accuracy"] = 0.4321
    root.eval_metrics.write_text(json.dumps(results))
    report(params, root)
    page = root.report_html.read_text()
    assert "<td>43.21%</td>" in page
    assert figure_images(page)["tradeoffs"] != figure_images(paths.report_html.read_text())["tradeoffs"]


@pytest.mark.integration
def test_the_flow_s_artifacts_link_the_html_report(prefect_server, reported):
    from prefect import flow
    from prefect.artifacts import Artifact

    from tasks.report import post_evaluation

    @flow(name="post-evaluation")
    def post(project_dir: Path) -> None:  # the flow's task, in a flow run of its own
        post_evaluation(project_dir)

    _, paths = reported
    post(paths.root)
    link = Artifact.get("distillation-report-html")
    assert link is not None and link.type == "markdown"
    assert f"({paths.report_html.resolve().as_uri()})" in str(link.data)


# --- in a real browser -----------------------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
WINDOW_WIDTH = 1280

# Put first in the page's head of a copy: it records every error (an uncaught exception, a resource that failed
# to load, console.error) and, once the page has loaded, each figure's image, where it was laid out, and the
# page's height, into a <pre id="probe"> that --dump-dom prints.
PROBE = """<script>
const errors = [];
addEventListener("error", event =>
  errors.push(event.message || "failed to load " + (event.target.src || event.target.tagName)), true);
addEventListener("unhandledrejection", event => errors.push("unhandled rejection: " + event.reason));
const consoleError = console.error;
console.error = (...args) => { errors.push(args.join(" ")); consoleError(...args); };
addEventListener("load", () => {
  const figures = [...document.querySelectorAll("figure")].map(figure => {
    const img = figure.querySelector("img"), box = img.getBoundingClientRect();
    return {id: figure.id, complete: img.complete, natural: [img.naturalWidth, img.naturalHeight],
            box: [box.left + scrollX, box.top + scrollY, box.width, box.height]};
  });
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({errors, figures, width: innerWidth, ratio: devicePixelRatio,
                                      height: document.documentElement.scrollHeight});
  document.body.append(probe);
});
</script>"""


def chromium(url: str, tmp_path: Path, height: int, *options: str) -> subprocess.CompletedProcess:
    """Headless Chromium on `url` in a window WINDOW_WIDTH x `height`, with a fresh profile."""
    executable = shutil.which("chromium")
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("chromium missing: .ci/run runs `make browser` first")
        pytest.skip("chromium missing: `make browser` installs it (Debian's package, as root)")
    profile = tempfile.mkdtemp(prefix="profile-", dir=tmp_path)  # a fresh one for each run
    command = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={WINDOW_WIDTH},{height}",
               "--enable-logging=stderr", "--v=0", *options, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.integration
def test_the_report_renders_in_chromium_with_no_error_and_every_figure_drawn(reported, tmp_path):
    _, paths = reported
    page = paths.report_html.read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>\n" + PROBE, 1))

    loaded = chromium(probed.as_uri(), tmp_path, 900, "--dump-dom")
    [found] = re.findall(r'<pre id="probe">(.*?)</pre>', loaded.stdout, re.S)
    probe = json.loads(html.unescape(found))
    assert probe["errors"] == []
    # What the browser itself logged from the page (console messages, its own complaints): nothing.
    assert [line for line in loaded.stderr.splitlines() if ":CONSOLE" in line] == []
    assert [figure["id"] for figure in probe["figures"]] == [f"figure-{name}" for name in FIGURES]
    assert probe["ratio"] == 1 and probe["width"] == WINDOW_WIDTH

    # The whole page in one window as tall as it: the screenshot holds every figure where the probe found it.
    screenshot = ARTIFACTS / "report.png"
    ARTIFACTS.mkdir(exist_ok=True)
    chromium(paths.report_html.as_uri(), tmp_path, probe["height"], f"--screenshot={screenshot}")
    print(f"screenshot of the HTML report: {screenshot}")
    pixels = image.imread(screenshot)[:, :, :3]
    assert pixels.shape[:2] == (probe["height"], WINDOW_WIDTH)
    for figure, uri in zip(probe["figures"], figure_images(page).values()):
        drawn = image.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))[:, :, :3]
        assert figure["complete"] and figure["natural"] == [drawn.shape[1], drawn.shape[0]], figure
        left, top, width, height = (round(value) for value in figure["box"])
        assert (width, height) == (drawn.shape[1], drawn.shape[0]), f"{figure['id']} rescaled on the page"
        shown = pixels[top:top + height, left:left + width]
        assert shown.std() > 0.05, f"{figure['id']} is blank in {screenshot}"  # not one colour
        assert (shown.min(axis=2) < 0.9).mean() > 0.01, f"{figure['id']} is blank in {screenshot}"  # ink on it
        assert np.abs(shown - drawn).mean() < 0.01, f"{figure['id']} is not its image in {screenshot}"
