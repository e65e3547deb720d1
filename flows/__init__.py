"""Prefect flows that chain the pipeline's stage tasks."""

import tasks  # noqa: F401  (sets Prefect's and DVC's quiet offline defaults before Prefect is imported)
