"""Wall time of a whole training command: mixtrain against timm's own ``train.py``, same data and model.

timm's ``train.py`` is not in the timm wheel: pass its path (``--timm-train``; take it from the
timm repository at a release tag). Both train ``resnet18`` (timm's) with SGD, a cosine schedule,
mixup alpha 0.2 and 2 loader workers on the CPU, in fp32 and in bf16 autocast, and evaluate on
clean val data every epoch:

  cifar32: 10,000 CIFAR-10 JPEGs (1,000 a class) + 1,000 val, 32 px, batch 128, 2 epochs;
           mixtrain streaming (RandomResizedCrop + flip in workers) and cached (dataset.cache=true);
  photos160: 2,000 of them upscaled to 320 px JPEGs (bench/shards.py makes both sets), read at
           160 px, batch 64, 1 epoch: photo-sized files and decode cost; no real photo folder is
           on these machines.

Each round runs every command of a row back to back (the machine is shared and drifts); the
ratio timm / mixtrain is taken within each round and its median over rounds is compared with
the targets: streaming >= 1.0x at 32 px and >= 1.2x on photos, cached >= 1.15x.

    python bench/vs_timm.py --timm-train PATH/train.py [--rounds 2] [--rows cifar32,photos160]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cifar10_jpeg_root, median
from shards import cache_dir, subset

TARGETS = {("cifar32", "streaming"): 1.0, ("cifar32", "cached"): 1.15, ("photos160", "streaming"): 1.2}
ROWS = {  # data set, image size, batch, epochs
    "cifar32": ("cifar10k", 32, 128, 2),
    "photos160": ("photos2k", 160, 64, 1),
}


def timm_command(train_py: str, root: Path, size: int, batch: int, epochs: int, bf16: bool, out: Path) -> list:
    return [sys.executable, train_py, "--data-dir", str(root), "--train-split", "train", "--val-split", "val",
            "--model", "resnet18", "--num-classes", "10", "--img-size", str(size), "-b", str(batch),
            "--mixup", "0.2", "--opt", "sgd", "--lr", "0.1", "--sched", "cosine", "--epochs", str(epochs),
            "--warmup-epochs", "0", "--workers", "2", "--device", "cpu", "--no-prefetcher", "--output", str(out),
            "--log-interval", "1000", *(["--amp", "--amp-dtype", "bfloat16"] if bf16 else [])]


def mixtrain_command(root: Path, size: int, batch: int, epochs: int, bf16: bool, cached: bool, out: Path) -> list:
    return [sys.executable, "-m", "mixtrain", "train", "dataset=imagefolder", f"dataset.root={root}",
            f"dataset.image_size={size}", f"dataset.cache={str(cached).lower()}", "model=timm",
            "dataset.train_interpolation=random",  # timm's --train-interpolation default
            "model.name=resnet18", f"trainer.batch_size={batch}", "augment=mixup", "augment.alpha=0.2", "optim=sgd",
            "optim.lr=0.1", "sched=cosine", "sched.warmup_epochs=0", f"trainer.epochs={epochs}",
            "trainer.num_workers=2", "trainer.device=cpu",
            # fp32 is asked for: trainer.amp=auto would take bf16 on a CPU where it is native
            *(["trainer.amp=true", "trainer.amp_dtype=bf16"] if bf16 else ["trainer.amp=false"]),
            f"hydra.run.dir={out}"]


def wall(command: list) -> float:
    t = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timm-train", required=True, help="timm's train.py (from the timm repository)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", default="cifar32,photos160")
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    src = cifar10_jpeg_root()
    roots = {"cifar10k": subset(src, cache_dir() / "cifar10k", 1000),
             "photos2k": subset(src, cache_dir() / "photos2k", 200, size=320)}
    ok, results = True, []
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows.split(","):
            name, size, batch, epochs = ROWS[row]
            root = roots[name]
            for precision in args.precisions.split(","):
                bf16 = precision == "bf16"
                kinds = ["streaming", "cached"] if size <= 64 else ["streaming"]
                times = {k: [] for k in ["timm", *kinds]}
                for r in range(args.rounds):
                    out = Path(tmp) / f"{row}-{precision}-{r}"
                    times["timm"].append(wall(timm_command(args.timm_train, root, size, batch, epochs, bf16,
                                                           out / "timm")))
                    for kind in kinds:
                        times[kind].append(wall(mixtrain_command(root, size, batch, epochs, bf16, kind == "cached",
                                                                 out / kind)))
                    metrics = [json.loads(line) for line in (out / "streaming" / "metrics.jsonl").read_text()
                               .splitlines()]
                    print(f"  {row} {precision} round {r}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items())
                          + f" | mixtrain streaming: start-up {metrics[0]['startup_time']:.1f}s, outside training "
                          f"{100 * sum(m['eval_time'] for m in metrics) / sum(m['epoch_time'] for m in metrics):.1f}%"
                          " of its epochs", flush=True)
                for kind in kinds:
                    ratio = median([t / m for t, m in zip(times["timm"], times[kind])])
                    target = TARGETS.get((row, kind))
                    met = ratio >= target if target else True
                    ok &= met
                    results.append((row, precision, kind, median(times["timm"]), median(times[kind]), ratio, target,
                                    met))
                    print(f"{row} {precision} {kind}: timm {median(times['timm']):.1f}s, mixtrain "
                          f"{median(times[kind]):.1f}s, timm/mixtrain {ratio:.2f}x (target >= {target}: "
                          f"{'met' if met else 'MISSED'})", flush=True)
    print("\n| data | precision | timm train.py | mixtrain | path | timm/mixtrain |\n|---|---|---|---|---|---|")
    for row, precision, kind, t, m, ratio, target, met in results:
        print(f"| {row} | {precision} | {t:.1f} s | {m:.1f} s | {kind} | **{ratio:.2f}x** |")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
