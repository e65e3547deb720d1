"""Training and inference, whatever the model and the loss: the loop (loop.py) minimizes an Objective
(objective.py) with the optimizer, schedule and regularization of params (optim.py, schedules.py,
early_stopping.py); runtime.py says where it runs (device, torchrun ranks); checkpoint.py and inference.py
save, load and run the trained models. Nothing here knows distillation: pipelines.kd builds on it."""
