"""The model card (card.md) published with a student: what it is, what it was trained on and how, how it
compares with the teacher and the baseline, where it came from, and how to load it."""

from __future__ import annotations

from typing import Any

import yaml

from pipelines.registry.manifest import EXPORTED, ONNX, Manifest
from pipelines.registry.onnx_export import INPUT, OUTPUT, PARITY_ATOL

COMPARED = (("accuracy", "{:.2%}"), ("macro_f1", "{:.4f}"), ("nll", "{:.4f}"), ("ece", "{:.4f}"),
            ("params", "{:,}"), ("latency_ms_batch_1", "{:.3f}"))
OTHERS = ("teacher", "student_baseline")


def render_card(manifest: Manifest, results: dict[str, dict], dataset: dict[str, Any], settings: dict[str, Any],
                bucket: str, prefix: str) -> str:
    """Markdown: `results` is metrics/eval.json, `dataset` the dataset card, `settings` the student's params."""
    models = [manifest.model, *(other for other in OTHERS if other in results and other != manifest.model)]
    header = "| metric | " + " | ".join(models) + " |"
    rows = [header, "|" + "---|" * (len(models) + 1)]
    for metric, form in COMPARED:
        if all(metric in results.get(model, {}) for model in models):
            rows.append(f"| {metric} | " + " | ".join(form.format(results[model][metric]) for model in models) + " |")
    splits = ", ".join(f"{split} {info['count']}" for split, info in dataset.get("splits", {}).items())
    source = manifest.source
    dvc = [f"- `{path}`: md5 `{md5}`" for kind in ("deps", "outs") for path, md5 in source.get(kind, {}).items()
           if not path.startswith("pipelines")]
    revision = source.get("git_revision") or "unknown (not a git checkout)"
    exported = manifest.entry(EXPORTED) is not None
    images = f'# images: float [N, {dataset.get("image_shape", ["C", "H", "W"])[0]}, H, W] on the [0, 1] scale'
    load = (f'program = torch.export.load("{EXPORTED}")  # torch alone\nlogits = program.module()(images)  {images}'
            if exported else "model, _ = load_model(Path(\"model.pt\"))  # pipelines.engine.checkpoint")
    onnx = [] if manifest.entry(ONNX) is None else [
        f"Without torch, `{ONNX}` in ONNX Runtime (or any server that loads ONNX), with any batch size; it "
        f"gave the same logits as torch within {PARITY_ATOL:g}, and the same class, on every test image:",
        "```python",
        "import onnxruntime",
        f'session = onnxruntime.InferenceSession("{ONNX}", providers=["CPUExecutionProvider"])',
        f'logits = session.run(["{OUTPUT}"], {{"{INPUT}": images}})[0]  {images.replace("float", "float32 numpy")}',
        "```",
    ]
    left_out = [f"- no `{file}`: {why}" for file, why in manifest.left_out.items()]
    return "\n".join([
        f"# {manifest.name} {manifest.version}",
        "",
        f"Student `{manifest.model}` of the distillation pipeline, "
        + ("trained on labels alone" if manifest.model == "student_baseline" else "distilled from its teacher")
        + f"; built for publishing {manifest.created_at}.",
        "",
        "## Data",
        f"- source: `{dataset.get('source', '?')}`; classes: {', '.join(map(str, dataset.get('class_names', [])))}",
        f"- image shape (C, H, W): {tuple(dataset.get('image_shape', ()))}; images per split: {splits}",
        f"- test split SHA-256: `{manifest.test_split_sha256}`",
        "",
        "## Test metrics",
        *rows,
        "",
        "## Training",
        "```yaml",
        yaml.safe_dump(settings, sort_keys=False).rstrip(),
        "```",
        "",
        "## Provenance",
        f"- git revision: `{revision}`" + (" (with uncommitted changes)" if source.get("git_dirty") else ""),
        f"- DVC stage `{source.get('dvc_stage', '?')}`, hashes from dvc.lock:",
        *(dvc or ["- (no dvc.lock entry)"]),
        "",
        "## Use",
        f"`python -m pipelines.fetch {manifest.name} {manifest.version} --bucket {bucket} --prefix {prefix}` "
        "downloads it, checks every file against manifest.json (size and SHA-256) and loads it. Without the "
        "pipeline's code:",
        "```python",
        "import torch",
        load,
        "```",
        *onnx,
        *(["", "Left out of this version:", *left_out] if left_out else []),
        "",
    ])
