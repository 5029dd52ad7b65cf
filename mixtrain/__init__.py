"""mixtrain: train image classifiers with Mixup and CutMix, and measure accuracy beside calibration."""

from mixtrain.runtime import clock

__version__ = "0.1.0"
STARTED = clock.STARTED  # importing mixtrain starts the clock of a run's startup_time (metrics.jsonl)


def load_model(path, device="cpu", weights="raw", trust=()):
    """A trained model for scripts: eval mode, its preprocessing, classes and stored temperature.

    ``m = mixtrain.load_model("outputs/run"); probs = m.probabilities(m.preprocess(uint8_batch))``;
    ``trust=["model._target_"]`` to import the model class of your own that a checkpoint names.
    """
    from mixtrain.artifacts.model import load_model as load  # `import mixtrain` stays light (no torch)

    return load(path, device, weights, trust)
