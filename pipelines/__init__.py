"""The pipeline's stage code: plain PyTorch, no Prefect. Each stage runs as `python -m pipelines.<stage>`."""
