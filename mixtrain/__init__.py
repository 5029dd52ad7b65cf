"""mixtrain: train image classifiers with Mixup and CutMix, and measure accuracy beside calibration."""

__version__ = "0.1.0"
