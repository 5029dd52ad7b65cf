"""Training throughput of mixtrain's loop against its compute limit and a hand-written loop.

ResNet-20 (``--model``), channels_last, batch 128 (``--batch``), on the real CIFAR-10 JPEG folder:

  (a) mixtrain: the engine's Trainer over the device-resident uint8 loader
      (``dataset=imagefolder dataset.cache=true``), batched crop+flip, soft-target loss;
  (b) compute limit: the same model and optimizer stepping on one batch already in memory;
  (c) hand-written: torchvision ImageFolder + PIL transforms + DataLoader(num_workers=2, 8 on CUDA);
  (d) mixtrain as (a) with model EMA on (timm's ModelEmaV3, every step) and trainer.accum_steps=2.

The loops are measured in interleaved rounds (the machine is shared and its speed
drifts); the ratios are taken within each round, where they ran back to back, and their
median over rounds is compared with the targets: (a) >= 0.95 x (b), (a) >= 1.3 x (c),
(d) >= 0.93 x (a). ``--bf16`` runs every loop under bf16 autocast (fast on CPUs with
AVX512-BF16 or AMX); ``--device cuda`` runs the same benchmark on a GPU.

    python bench/pipeline.py [--steps 30] [--rounds 3] [--bf16 | --fp16] [--device cpu|cuda]
                             [--batch 128] [--model resnet20]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import cifar10_jpeg_root, median, spread
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from mixtrain.config import AugmentConfig, EmaConfig, OptimConfig, SchedConfig, TrainConfig, TrainerConfig
from mixtrain.data import FolderConfig
from mixtrain.models import CifarModelConfig
from mixtrain.train.engine import Part
from mixtrain.train.monitor import RunMonitor
from mixtrain.train.training import Training

WARMUP = 5
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


MODEL = "resnet20"  # --model: any bundled CIFAR model


def new_model_and_optimizer(device):
    from mixtrain.models.cifar_resnet import BUILDERS

    torch.manual_seed(0)
    model = BUILDERS[MODEL](num_classes=10, drop_rate=0.0).to(device, memory_format=torch.channels_last)
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def rate_from_step_times(times, batch):
    """img/s over the steps after warm-up, from the wall-clock time at the end of each step."""
    return batch * (len(times) - 1 - WARMUP) / (times[-1] - times[WARMUP])


def synchronize(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


SCALERS = {}  # one GradScaler per optimizer for the hand-written loops under fp16


def plain_step(model, opt, x, y, dtype, device) -> float:
    """One step of the loop a user writes by hand; returns the time at its end."""
    scaler = SCALERS.setdefault(id(opt), torch.amp.GradScaler(device.type, enabled=dtype == torch.float16))
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return synchronize(device)


class StepTimes(Part):
    """Records the time at the end of every step (after a device sync on CUDA, so it is the step's own)."""

    def __init__(self, device) -> None:
        self.device, self.times = device, []

    def step_end(self, trainer, out) -> None:
        self.times.append(synchronize(self.device))


def mixtrain_config(root, steps, batch, dtype, device, ema_accum=False) -> TrainConfig:
    dataset = FolderConfig(root=str(root), val_split="test", image_size=32, cache=True, mean=list(MEAN), std=list(STD))
    trainer = TrainerConfig(batch_size=batch, channels_last=True, device=device.type, epochs=1000,
                            amp=dtype is not None, amp_dtype="fp16" if dtype == torch.float16 else "bf16",
                            limit_train_batches=WARMUP + 1 + steps,
                            log_every=10**9, checkpoint=False, accum_steps=2 if ema_accum else 1,
                            ema=EmaConfig(enabled=ema_accum))
    return TrainConfig(dataset=dataset, model=CifarModelConfig(name=MODEL), augment=AugmentConfig(),
                       optim=OptimConfig(name="sgd", lr=0.05, filter_bias_and_bn=False, kwargs={"nesterov": False}),
                       sched=SchedConfig(name="cosine"), trainer=trainer)


def bench_mixtrain(training: Training, epoch: int, device):
    """(a) or (d): one (shortened) epoch of the engine's Trainer, its only part timing the steps."""
    timer = StepTimes(device)
    gc.collect()  # what building the run left behind is not the loop's cost
    training.trainer(parts=[timer]).train_epoch(epoch)
    return rate_from_step_times(timer.times, training.cfg.trainer.batch_size)


def bench_compute_limit(images, labels, steps, batch, dtype, device):
    model, opt = new_model_and_optimizer(device)
    times = [plain_step(model, opt, images, labels, dtype, device) for _ in range(WARMUP + 1 + steps)]
    return rate_from_step_times(times, batch)


def bench_hand_written(root, steps, batch, dtype, device):
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    workers = 8 if device.type == "cuda" else 2
    loader = DataLoader(datasets.ImageFolder(str(root / "train"), tf), batch_size=batch, shuffle=True,
                        num_workers=workers, drop_last=True, pin_memory=device.type == "cuda")
    model, opt = new_model_and_optimizer(device)
    times = []
    for i, (x, y) in enumerate(loader):
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        times.append(plain_step(model, opt, x, y.to(device, non_blocking=True), dtype, device))
        if i == WARMUP + steps:
            break
    return rate_from_step_times(times, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in every loop")
    parser.add_argument("--fp16", action="store_true", help="fp16 autocast with a GradScaler in every loop (CUDA)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--model", default="resnet20", help="a bundled CIFAR model: resnet20, preact_resnet18, ...")
    args = parser.parse_args()
    global MODEL
    MODEL = args.model
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
    device, batch = torch.device(args.device), args.batch
    root = cifar10_jpeg_root()

    tmp = tempfile.TemporaryDirectory()
    t0 = time.perf_counter()
    runs = {name: Training(mixtrain_config(root, args.steps, batch, dtype, device, ema_accum=name == "ema+accum"),
                           Path(tmp.name) / name, RunMonitor(Path(tmp.name), enabled=False))
            for name in ("mixtrain", "ema+accum")}
    data = runs["mixtrain"].data
    print(f"decoded {data.train.num_samples} + {data.val.num_samples} JPEGs into {device} memory twice in "
          f"{time.perf_counter() - t0:.1f}s; {torch.get_num_threads()} torch threads, "
          f"{ {None: 'fp32', torch.bfloat16: 'bf16 autocast', torch.float16: 'fp16 autocast'}[dtype]}, batch {batch}, "
          f"{MODEL}")
    x, y = next(iter(data.train))
    images, labels = x.clone(), y.clone()

    results = {"mixtrain": [], "compute": [], "hand": [], "ema+accum": []}
    for r in range(args.rounds):
        results["compute"].append(bench_compute_limit(images, labels, args.steps, batch, dtype, device))
        results["mixtrain"].append(bench_mixtrain(runs["mixtrain"], r, device))
        results["hand"].append(bench_hand_written(root, args.steps, batch, dtype, device))
        results["ema+accum"].append(bench_mixtrain(runs["ema+accum"], r, device))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} img/s" for k, v in results.items()), flush=True)

    a, b, c, d = (median(results[k]) for k in ("mixtrain", "compute", "hand", "ema+accum"))
    # The machine's speed drifts between rounds: compare within each round, then take the median.
    ratio = {name: median([x / y for x, y in zip(results[top], results[bottom])])
             for name, top, bottom in (("ab", "mixtrain", "compute"), ("ac", "mixtrain", "hand"),
                                       ("da", "ema+accum", "mixtrain"))}
    print()
    print(f"(a) mixtrain Trainer              {a:7.0f} img/s  ({spread(results['mixtrain'])})")
    print(f"(b) compute limit                 {b:7.0f} img/s  ({spread(results['compute'])})")
    print(f"(c) ImageFolder+PIL+DataLoader    {c:7.0f} img/s  ({spread(results['hand'])})")
    print(f"(d) mixtrain, EMA + accum_steps=2 {d:7.0f} img/s  ({spread(results['ema+accum'])})")
    print("median over rounds of the ratio within a round:")
    print(f"(a)/(b) = {ratio['ab']:.3f}   target >= 0.95   {'OK' if ratio['ab'] >= 0.95 else 'MISSED'}")
    print(f"(a)/(c) = {ratio['ac']:.2f}    target >= 1.30   {'OK' if ratio['ac'] >= 1.3 else 'MISSED'}")
    print(f"(d)/(a) = {ratio['da']:.3f}   target >= 0.93   {'OK' if ratio['da'] >= 0.93 else 'MISSED'}")


if __name__ == "__main__":
    main()
