"""Evaluation: metrics, calibration and temperature scaling, bootstrap intervals, FGSM
robustness, and the `eval` and `compare` commands."""
