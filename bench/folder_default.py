"""What `mixtrain train dataset=imagefolder dataset.root=<photos>` costs with the default model: peak
memory and training images a second of `model=auto` (timm's resnet18 at the folder's 224 px) against
`model=resnet20` (what the default trained before: a CIFAR ResNet with no downsampling stem).

The photos: 2,000 CIFAR-10 images upscaled to 320 px JPEGs (bench/shards.py makes them; no real
photo folder is on these machines). Each command trains a few batches of the default batch (128)
on the CPU and evaluates one; rounds interleave the two commands. Peak memory is the process's
maximum resident set (getrusage of the child); img/s is the run's own `img_per_s` (metrics.jsonl).

    python bench/folder_default.py [--rounds 2] [--batches 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from common import cifar10_jpeg_root, median
from shards import cache_dir, subset


def run(root: Path, model: list, batches: int, out: Path) -> tuple:
    """(peak resident MB, img/s) of one training command."""
    command = [sys.executable, "-m", "mixtrain", "train", "dataset=imagefolder", f"dataset.root={root}", *model,
               "trainer.epochs=1", f"trainer.limit_train_batches={batches}", "trainer.limit_val_batches=1",
               "trainer.checkpoint=false", "trainer.log_every=1", f"hydra.run.dir={out}"]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kB: the one child of this process
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return peak / 1024, record["img_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args()
    root = subset(cifar10_jpeg_root(), cache_dir() / "photos2k", 200, size=320)
    arms = {"before: model=resnet20": ["model=resnet20"], "after: the default (model=auto)": []}
    results = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as tmp:
        # Each command from a process of its own (--one): getrusage's children's peak is then its own.
        for r in range(args.rounds):
            for name, model in arms.items():
                out = Path(tmp) / f"{r}-{len(results[name])}-{len(model)}"
                probe = [sys.executable, __file__, "--one", str(root), str(args.batches), str(out), *model]
                done = subprocess.run(probe, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(done.stderr[-2000:])
                peak, rate = json.loads(done.stdout.splitlines()[-1])
                results[name].append((peak, rate))
                print(f"  round {r} {name}: peak {peak:.0f} MB, {rate:.1f} img/s", flush=True)
    (b_name, before), (a_name, after) = results.items()
    peak_b, peak_a = median([p for p, _ in before]), median([p for p, _ in after])
    rate_b, rate_a = median([r for _, r in before]), median([r for _, r in after])
    print(f"\n| model | peak memory | train img/s |\n|---|---|---|\n| {b_name} | {peak_b:.0f} MB | {rate_b:.1f} |\n"
          f"| {a_name} | {peak_a:.0f} MB | {rate_a:.1f} |\n\nafter/before: memory {peak_a / peak_b:.2f}x, "
          f"speed {rate_a / rate_b:.1f}x")


def one(root: str, batches: str, out: str, *model: str) -> None:
    """One command in a process of its own, so that its peak is its own; prints [peak MB, img/s]."""
    print(json.dumps(run(Path(root), list(model), int(batches), Path(out))))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        one(*sys.argv[2:])
    else:
        main()
