"""Each table of names is the one source of what the docs list: optimizers, schedules, architectures, data
sources and distillation methods, with the classes they name, as the schema and the factories see them. The
README fits on a screen and quotes no machine timing (docs/benchmarks.md holds them), and every relative link
of the README and the docs leads to a file, and a heading, that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from pipelines.config.data import SOURCES
from pipelines.config.optim import OPTIMIZERS
from pipelines.config.schedules import SCHEDULES
from pipelines.config.training import ARCHITECTURES
from pipelines.data.sources import READERS
from pipelines.kd import METHODS
from pipelines.kd.base import Term
from pipelines.models import BUILDERS
from tests.conftest import PROJECT_ROOT, SHIPPED_PARAMS


def doc_table(path: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first markdown table under `heading`: first cell without backticks -> the other cells."""
    text = (PROJECT_ROOT / path).read_text()
    section = text[text.index(heading):]
    rows = {}
    lines = section.splitlines()[1:]
    for line, after in zip(lines, lines[1:] + [""]):
        if line.startswith("## "):
            break
        if line.startswith("| `") and not after.startswith("|---"):  # a row, not the header
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_the_optimizer_table_of_the_docs_is_the_schema_s_with_its_torch_classes() -> None:
    documented = doc_table("docs/optimization.md", "## Optimizers")
    assert list(documented) == list(OPTIMIZERS)
    for name, schema in OPTIMIZERS.items():
        assert documented[name][0] == f"`{schema.torch_class}`"
        assert issubclass(getattr(torch.optim, schema.torch_class), torch.optim.Optimizer)


def test_the_schedule_table_of_the_docs_is_the_schema_s_with_its_torch_classes() -> None:
    documented = doc_table("docs/optimization.md", "## Learning-rate schedules")
    assert list(documented) == list(SCHEDULES)
    for name, schema in SCHEDULES.items():
        assert documented[name][0].startswith(f"`{schema.torch_class}`")
        assert hasattr(torch.optim.lr_scheduler, schema.torch_class)


def test_the_models_build_exactly_the_architectures_of_the_table() -> None:
    assert list(BUILDERS) == list(ARCHITECTURES)


@pytest.mark.parametrize("kind", list(ARCHITECTURES))
def test_every_architecture_names_a_model_class_and_is_in_params_yaml_s_comment(kind: str) -> None:
    assert issubclass(BUILDERS[kind], torch.nn.Module)
    assert ARCHITECTURES[kind].form in SHIPPED_PARAMS.read_text()


def test_the_data_sources_of_the_docs_are_the_table_s_and_each_names_its_reader() -> None:
    documented = doc_table("docs/data.md", "## Your own data")
    assert [form.partition(":")[0] for form in documented] == list(SOURCES)
    assert list(READERS) == list(SOURCES)
    assert all(callable(reader) for reader in READERS.values())


def test_the_methods_of_the_docs_are_the_kd_table_s() -> None:
    documented = doc_table("docs/distillation.md", "## Methods")
    assert list(documented) == list(METHODS)
    for name, method in METHODS.items():
        assert issubclass(method, Term)
        options = re.findall(r"`(\w+)`", documented[name][1])
        assert options == list(method.Options.model_fields), name


DOCUMENTS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]


def prose(path: Path) -> str:
    """A markdown file without its fenced code blocks and inline code (where a `](` is not a link)."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", path.read_text(), flags=re.DOTALL | re.MULTILINE))


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file's headings, as GitHub makes them: lower case, punctuation dropped, spaces
    to hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", path.read_text(), flags=re.DOTALL | re.MULTILINE),
                          flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_the_readme_fits_on_a_screen() -> None:
    assert len((PROJECT_ROOT / "README.md").read_text().splitlines()) <= 250


def test_the_readme_quotes_no_machine_timing() -> None:
    # seconds, minutes, milliseconds, images or steps per second: docs/benchmarks.md (make bench-speed) holds them
    timings = re.findall(r"\b\d[\d.,]*\s*(?:ms|s|sec|seconds?|min|minutes?|h|hours?|img/s|steps/s)\b",
                         (PROJECT_ROOT / "README.md").read_text())
    assert timings == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_relative_link_leads_to_a_file_and_a_heading_that_exist(document: Path) -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", prose(document))
    relative = [link for link in links if not re.match(r"[a-z]+:", link)]  # http(s):, mailto:
    assert relative or document.name != "README.md"  # the README links to the docs
    for link in relative:
        target, _, anchor = link.partition("#")
        path = (document.parent / target).resolve() if target else document
        assert path.is_file(), f"{document.name}: {link} leads to no file"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{document.name}: {link} leads to no heading of {path.name}"
