"""Training throughput of mixtrain's loop against its compute limit and a hand-written loop.

ResNet-20, channels_last, batch 128, CPU, on the real CIFAR-10 JPEG folder:

  (a) mixtrain: ``train_one_epoch`` over the device-resident uint8 loader
      (``dataset=imagefolder dataset.cache=true``), batched crop+flip, soft-target loss;
  (b) compute limit: the same model and optimizer stepping on one batch already in memory;
  (c) hand-written: torchvision ImageFolder + PIL transforms + DataLoader(num_workers=2).

The three are measured in interleaved rounds (the machine is shared and its speed
drifts); the ratios are taken within each round, where the three ran back to back, and
their median over rounds is compared with the targets: (a) >= 0.95 x (b), (a) >= 1.3 x (c).
``--bf16`` runs all three under bf16 autocast (fast on CPUs with AVX512-BF16 or AMX).

    python bench/pipeline.py [--steps 30] [--rounds 3] [--bf16]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from common import cifar10_jpeg_root, median, spread
from mixtrain.config import AugmentConfig
from mixtrain.data import build_data
from mixtrain.engine import Precision, train_one_epoch
from mixtrain.losses import create_loss
from mixtrain.mixing import Mixer
from mixtrain.models.cifar_resnet import resnet_cifar
from mixtrain.optim import create_scheduler

WARMUP = 5
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def new_model_and_optimizer():
    torch.manual_seed(0)
    model = resnet_cifar(20, 10).to(memory_format=torch.channels_last)
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def rate_from_step_times(times, batch):
    """img/s over the steps after warm-up, from the wall-clock time at the end of each step."""
    return batch * (len(times) - 1 - WARMUP) / (times[-1] - times[WARMUP])


def plain_step(model, opt, x, y, dtype) -> float:
    """One step of the loop a user writes by hand; returns the time at its end."""
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter()


def bench_mixtrain(data, steps, batch, dtype):
    model, opt = new_model_and_optimizer()
    data.train.max_batches = WARMUP + 1 + steps
    sched = create_scheduler_for(opt, len(data.train))
    mixer = Mixer(AugmentConfig(), 10, epochs=1)
    times = []
    train_one_epoch(model, data.train, opt, sched, Precision("cpu", dtype, torch.amp.GradScaler("cpu", enabled=False)),
                    mixer, create_loss(AugmentConfig()), epoch=0,
                    after_step=lambda step, skipped, stop: times.append(time.perf_counter()))
    return rate_from_step_times(times, batch)


def create_scheduler_for(opt, steps):
    from mixtrain.config import CosineConfig
    return create_scheduler(CosineConfig(), opt, steps, 1)


def bench_compute_limit(images, labels, steps, batch, dtype):
    model, opt = new_model_and_optimizer()
    times = [plain_step(model, opt, images, labels, dtype) for _ in range(WARMUP + 1 + steps)]
    return rate_from_step_times(times, batch)


def bench_hand_written(root, steps, batch, dtype):
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    loader = DataLoader(datasets.ImageFolder(str(root / "train"), tf), batch_size=batch, shuffle=True,
                        num_workers=2, drop_last=True)
    model, opt = new_model_and_optimizer()
    times = []
    for i, (x, y) in enumerate(loader):
        times.append(plain_step(model, opt, x.contiguous(memory_format=torch.channels_last), y, dtype))
        if i == WARMUP + steps:
            break
    return rate_from_step_times(times, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in all three loops")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.bf16 else None
    batch = 128
    root = cifar10_jpeg_root()

    from mixtrain.config import FolderConfig, TrainerConfig
    t0 = time.perf_counter()
    dataset = FolderConfig(root=str(root), val_split="test", image_size=32, cache=True, mean=list(MEAN), std=list(STD))
    trainer = TrainerConfig(batch_size=batch, channels_last=True, device="cpu")
    data = build_data(dataset, trainer, torch.device("cpu"), seed=0)
    print(f"decoded {data.train.num_samples} + {data.val.num_samples} JPEGs into device memory in "
          f"{time.perf_counter() - t0:.1f}s; {torch.get_num_threads()} torch threads, {'bf16 autocast' if dtype else 'fp32'}")
    x, y = next(iter(data.train))
    images, labels = x.clone(), y.clone()

    results = {"mixtrain": [], "compute": [], "hand": []}
    for r in range(args.rounds):
        results["compute"].append(bench_compute_limit(images, labels, args.steps, batch, dtype))
        results["mixtrain"].append(bench_mixtrain(data, args.steps, batch, dtype))
        results["hand"].append(bench_hand_written(root, args.steps, batch, dtype))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} img/s" for k, v in results.items()), flush=True)

    a, b, c = (median(results[k]) for k in ("mixtrain", "compute", "hand"))
    # The machine's speed drifts between rounds: compare within each round, then take the median.
    ab = median([x / y for x, y in zip(results["mixtrain"], results["compute"])])
    ac = median([x / y for x, y in zip(results["mixtrain"], results["hand"])])
    print()
    print(f"(a) mixtrain loop            {a:7.0f} img/s  ({spread(results['mixtrain'])})")
    print(f"(b) compute limit            {b:7.0f} img/s  ({spread(results['compute'])})")
    print(f"(c) ImageFolder+PIL+2 workers {c:6.0f} img/s  ({spread(results['hand'])})")
    print("median over rounds of the ratio within a round:")
    print(f"(a)/(b) = {ab:.3f}   target >= 0.95   {'OK' if ab >= 0.95 else 'MISSED'}")
    print(f"(a)/(c) = {ac:.2f}    target >= 1.30   {'OK' if ac >= 1.3 else 'MISSED'}")


if __name__ == "__main__":
    main()
