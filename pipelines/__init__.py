"""The pipeline's stages, each `python -m pipelines.<stage>` (the modules of this folder), over a library:
config and core (params schema; paths, atomic writes, the stage runner), data and models, engine (the
training loop and what it needs), kd (distillation methods) and evaluation. Imports point that way only."""
