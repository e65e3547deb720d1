"""Prefect flows that chain the pipeline's stage tasks: distillation.py (the pipeline), study.py (the
optimization study)."""
