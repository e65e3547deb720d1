"""Training and inference, whatever the model and the loss: the loop (loop.py) minimizes an Objective
(objective.py) with the optimizer, schedule and regularization of params (optim.py, schedules.py, ema.py,
early_stopping.py), on the processes as a strategy lays the model over them (strategies/), saving what a
resumed run needs (resume/); runtime.py says where it runs (device, torchrun ranks); checkpoint.py and
inference.py save, load and run the trained models. Nothing here knows distillation: pipelines.kd builds on
it. docs/architecture.md draws the picture."""
