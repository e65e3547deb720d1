"""Where every artifact of the pipeline lives, relative to a project root (dvc.yaml names the same files)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Paths:
    root: Path = Path(".")

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    def split(self, name: str) -> Path:
        return self.prepared / f"{name}.parquet"

    @property
    def arrow_cache(self) -> Path:
        """Memory-mappable Arrow copies of the Parquet files that stages read (see pipelines.data.images)."""
        return self.root / ".cache" / "arrow"

    @property
    def card(self) -> Path:
        return self.prepared / "card.json"

    @property
    def transfer(self) -> Path:
        return self.root / "data" / "transfer" / "transfer.parquet"

    @property
    def teacher_logits(self) -> Path:
        return self.root / "data" / "teacher_logits" / "transfer_logits.npy"

    def teacher_features(self, student: str) -> Path:
        """The teacher's features of the layers distilled student `student` reads, stored when they fit."""
        return self.root / "data" / "teacher_features" / student

    def teacher_views(self, student: str) -> Path:
        """The teacher's logits on each epoch's fresh views of distilled student `student` (`teacher: cached`)."""
        return self.root / "data" / "teacher_views" / student

    def model(self, name: str) -> Path:
        """The checkpoint of model `name` (teacher, student_baseline, or a distilled student's name)."""
        return self.root / "models" / f"{name}.pt"

    def heads(self, name: str) -> Path:
        """What distilled student `name`'s loss learned besides the student (connectors, projection heads)."""
        return self.root / "models" / f"{name}.heads.pt"

    def training_log(self, name: str) -> Path:
        """The dvclive folder of one training run: metrics.json and per-epoch plots."""
        return self.root / "metrics" / "train" / name

    def resume_states(self, folder: str, name: str) -> Path:
        """Where model `name`'s training states are saved while it trains (params' resume.folder)."""
        return self.root / folder / name

    @property
    def params_check(self) -> Path:
        """What stage check_params writes once params.yaml is valid: the same bytes every time."""
        return self.root / "reports" / "params_check.txt"

    @property
    def eval_metrics(self) -> Path:
        return self.root / "metrics" / "eval.json"

    def confusion_plot(self, name: str) -> Path:
        return self.root / "plots" / "confusion" / f"{name}.json"

    @property
    def report(self) -> Path:
        return self.root / "reports" / "report.md"

    @property
    def report_html(self) -> Path:
        """The report as one self-contained HTML page, its figures inline (pipelines/evaluation/html_report.py)."""
        return self.root / "reports" / "report.html"

    @property
    def publish_record(self) -> Path:
        """What the publish stage decided for each student (published, unchanged, kept) and why."""
        return self.root / "reports" / "publish.json"

    def publish_bundle(self, name: str) -> Path:
        """The folder a student's published files are built in before they are uploaded."""
        return self.root / ".cache" / "publish" / name

    # The optimization study (flows/study.py): one folder per setting, then the summary beside them.
    @property
    def study(self) -> Path:
        return self.root / "study"

    def study_run(self, setting: str) -> Path:
        """The dvclive folder of one study setting."""
        return self.study / "runs" / setting

    def study_result(self, setting: str) -> Path:
        return self.study / "runs" / f"{setting}.json"
