"""Soak: many short epochs with evaluation and checkpointing every epoch; memory must stay flat.

Trains ResNet-20 on the bundled CIFAR-10 subset for ``--epochs`` short epochs
(``--steps`` batches each, the full 1,000-image evaluation and a checkpoint every epoch)
and prints the peak RSS of each epoch (Linux VmHWM, reset at every epoch start) and the
RSS at its end. The baseline is the peak of the first epoch after warm-up (epoch
``--warmup``); the verdict compares the last epochs with it and fits a slope.

    python bench/soak.py [--epochs 60] [--steps 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from mixtrain.config import config_dir, to_object
from mixtrain.options import register_configs
from mixtrain.train.monitor import RunMonitor
from mixtrain.train.training import fit


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) for this process


class MemoryMonitor(RunMonitor):
    """The usual monitor, plus per-epoch peak and end-of-epoch RSS."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        self.peaks, self.ends = [], []
        reset_peak()

    def epoch_end(self, record):
        super().epoch_end(record)
        self.peaks.append(status_kb("VmHWM") / 1024)
        self.ends.append(status_kb("VmRSS") / 1024)
        reset_peak()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--steps", type=int, default=5, help="training batches per epoch")
    parser.add_argument("--warmup", type=int, default=5, help="epochs before the baseline")
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    register_configs()
    overrides = [f"trainer.epochs={args.epochs}", f"trainer.limit_train_batches={args.steps}", "trainer.device=cpu",
                 "augment=cutmix", "augment.mode=elem"]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = to_object(compose("train", overrides=overrides))
    with tempfile.TemporaryDirectory() as tmp:
        monitor = MemoryMonitor(Path(tmp) / "run")
        fit(cfg, Path(tmp) / "run", monitor=monitor)
    peaks, ends = np.array(monitor.peaks), np.array(monitor.ends)

    print(f"\n{'epoch':>5} {'peak RSS MB':>12} {'end RSS MB':>11}")
    for epoch, (peak, end) in enumerate(zip(peaks, ends)):
        print(f"{epoch:5d} {peak:12.1f} {end:11.1f}")
    base = peaks[args.warmup]
    last = peaks[-5:].mean()
    slope = np.polyfit(np.arange(args.warmup, len(peaks)), peaks[args.warmup:], 1)[0]
    print(f"\nbaseline (epoch {args.warmup} peak) {base:.1f} MB; last 5 epochs' mean peak {last:.1f} MB; "
          f"ratio {last / base:.3f}; slope {slope * 1024:+.1f} KB/epoch over epochs {args.warmup}-{len(peaks) - 1}")
    flat = last / base < 1.02 and slope < 0.5  # a falling peak is no leak
    print(f"memory flat (ratio < 1.02 and slope < +0.5 MB/epoch): {'OK' if flat else 'GROWING'}")


if __name__ == "__main__":
    main()
