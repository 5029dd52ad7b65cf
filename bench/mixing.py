"""Mixing speed: mixtrain vs timm.data.Mixup vs torchvision v2.MixUp/CutMix on the CPU.

A 256x3x32x32 float batch, mixup / cutmix / switch in batch, pair and elem modes. Each
call includes building the (smoothed, mixed) targets. timm and mixtrain mix in place,
so every call gets a fresh copy, made outside the timed region. torchvision has no
per-pair or per-sample mode. The libraries take turns call by call (the machine is
shared and noisy); reported: the 10th-percentile time per call, timm / mixtrain ratios, and
mixing as a share of one ResNet-20 training step on the same batch.

Targets: batch mode no slower than timm; pair and elem modes >= 5x faster than timm.

Every other registered method that mixes pixels (FMix, ResizeMix, SaliencyMix, SmoothMix, RegMixup,
Mosaic, k-mixup, ...: read from the registry) against mixtrain's CutMix in the same run, each at its
defaults: a 128-image batch at 32 and 224 px, each mode. Target: in batch mode each within 2x of CutMix.

    python bench/mixing.py [--calls 400] [--family-calls 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from timm.data import Mixup
from torchvision.transforms import v2

from mixtrain.config.registry import options
from mixtrain.mixing import CutmixConfig, Mixer, MixupConfig, SwitchConfig, create_mixer
from mixtrain.models.cifar_resnet import resnet_cifar

BATCH, CLASSES, SMOOTHING = 256, 10, 0.1


def interleaved(fns, make_input, calls):
    """Seconds per call (10th percentile) of each ``fn(*make_input())``, taking turns call by call.

    Each input is made just before its call and outside the clock, so it is fresh and in
    cache, like a batch the loader has just written; taking turns call by call gives every
    library the same share of the machine's noise.
    """
    times = [[] for _ in fns]
    for i in range(calls + 5):
        for k, fn in enumerate(fns):
            if fn is None:
                continue
            args = make_input()
            t0 = time.perf_counter()
            fn(*args)
            if i >= 5:
                times[k].append(time.perf_counter() - t0)
    # The 10th percentile: like timeit's best-of-N, it measures the work and not the noise of
    # a shared machine, but one lucky call cannot decide it.
    return [statistics.quantiles(t, n=10)[0] if t else float("nan") for t in times]


def mixtrain_mixer(kind, mode):
    cfg = {"mixup": MixupConfig(alpha=1.0, mode=mode, label_smoothing=SMOOTHING),
           "cutmix": CutmixConfig(alpha=1.0, mode=mode, label_smoothing=SMOOTHING),
           "switch": SwitchConfig(mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode, label_smoothing=SMOOTHING)}[kind]
    mixer = Mixer(cfg, CLASSES, epochs=1)
    return lambda x, y: mixer(x, y, 0)


def timm_mixer(kind, mode):
    alphas = {"mixup": (1.0, 0.0), "cutmix": (0.0, 1.0), "switch": (0.8, 1.0)}[kind]
    return Mixup(mixup_alpha=alphas[0], cutmix_alpha=alphas[1], mode=mode, label_smoothing=SMOOTHING,
                 num_classes=CLASSES)


def torchvision_mixer(kind):
    mixup, cutmix = v2.MixUp(alpha=1.0, num_classes=CLASSES), v2.CutMix(alpha=1.0, num_classes=CLASSES)
    return {"mixup": mixup, "cutmix": cutmix, "switch": v2.RandomChoice([mixup, cutmix])}[kind]


def resnet20_step_seconds(x, y, steps=8):
    model = resnet_cifar(20, CLASSES).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


# Keep freed memory in the heap: without this, whether a 3 MB allocation page-faults (and
# costs ~0.5 ms, more than the mixing) depends on glibc's adaptive thresholds and on the
# order of earlier calls, not on the library being timed. A long training run reaches the
# same steady state. Every library runs under the same setting.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


TIMM_KINDS = ("mixup", "cutmix", "switch")  # measured against timm above


def family_methods():
    """Every registered method but those measured against timm and ``none``, that mixes pixels, by name."""
    return {name: method.schema for name, method in sorted(options("augment").items())
            if method.previewable and name not in (*TIMM_KINDS, "none")}


def family(calls: int) -> bool:
    """Each other method beside CutMix, per batch of 128, at 32 and 224 px, in each mode."""
    methods = family_methods()
    print(f"\nthe other methods against CutMix (mixtrain), batch 128, {CLASSES} classes")
    print(f"{'size':>5} {'mode':6} {'cutmix':>9} " + " ".join(f"{name:>16}" for name in methods))
    ok = True
    for size in (32, 224):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(128, 3, size, size, generator=g), torch.randint(0, CLASSES, (128,), generator=g)
        make = lambda: (x.clone(), y.clone())  # noqa: E731
        for mode in ("batch", "pair", "elem"):
            mixers = [create_mixer(CutmixConfig(mode=mode), CLASSES, epochs=1)]
            mixers += [create_mixer(schema(mode=mode), CLASSES, epochs=1) for schema in methods.values()]
            fns = [lambda a, b, m=m: m(a, b, 0) for m in mixers]
            interleaved(fns, make, 5)
            cut, *others = interleaved(fns, make, calls)
            cells = " ".join(f"{t * 1e3:7.2f} ms {t / cut:5.1f}x" for t in others)
            print(f"{size:5d} {mode:6} {cut * 1e3:6.2f} ms {cells}", flush=True)
            if mode == "batch":
                ok &= all(t / cut <= 2.0 for t in others)
    print(f"batch mode within 2x of CutMix: {'OK' if ok else 'MISSED'}")
    return ok


def main() -> None:
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--family-calls", type=int, default=60)
    parser.add_argument("--family-only", action="store_true")
    args = parser.parse_args()
    if args.family_only:
        family(args.family_calls)
        return
    g = torch.Generator().manual_seed(0)
    base_x = torch.randn(BATCH, 3, 32, 32, generator=g)
    base_y = torch.randint(0, CLASSES, (BATCH,), generator=g)
    make = lambda: (base_x.clone(), base_y.clone())  # noqa: E731

    step = resnet20_step_seconds(base_x, base_y)
    print(f"batch {BATCH}x3x32x32, {CLASSES} classes, {torch.get_num_threads()} threads; "
          f"one ResNet-20 training step: {step * 1e3:.0f} ms\n")
    print(f"{'kind':8} {'mode':6} {'mixtrain':>10} {'timm':>10} {'torchvision':>12} {'timm/mixtrain':>14} "
          f"{'share of step':>14}")
    # Warm up every code path (and the heap) before anything is timed.
    for kind in TIMM_KINDS:
        for mode in ("batch", "pair", "elem"):
            interleaved([mixtrain_mixer(kind, mode), timm_mixer(kind, mode)], make, 20)
    rows = []
    for kind in TIMM_KINDS:
        for mode in ("batch", "pair", "elem"):
            ours, theirs, tv = interleaved(
                [mixtrain_mixer(kind, mode), timm_mixer(kind, mode), torchvision_mixer(kind) if mode == "batch" else None],
                make, args.calls)
            rows.append((kind, mode, ours, theirs))
            tv_text = f"{tv * 1e3:9.3f} ms" if mode == "batch" else f"{'-':>12}"
            print(f"{kind:8} {mode:6} {ours * 1e3:7.3f} ms {theirs * 1e3:7.3f} ms {tv_text} {theirs / ours:13.1f}x "
                  f"{100 * ours / step:13.2f}%", flush=True)
    batch_ok = all(t / o >= 1.0 for _, m, o, t in rows if m == "batch")
    sample_ok = all(t / o >= 5.0 for _, m, o, t in rows if m != "batch")
    print(f"\nbatch mode no slower than timm: {'OK' if batch_ok else 'MISSED'}; "
          f"pair/elem >= 5x faster than timm: {'OK' if sample_ok else 'MISSED'}")
    family(args.family_calls)


if __name__ == "__main__":
    main()
