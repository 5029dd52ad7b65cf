"""Training: the engine (a short loop of steps and sync points), its parts (EMA, evaluation,
checkpoints, records, NaN and signal policies), the run assembled from its config, and what
it needs (optimizers, schedules, precision, checkpoints, torchrun)."""
