"""Loader throughput of WebDataset shards against the folder they were written from.

The same images, transforms (RandomResizedCrop + flip, normalized), batch, workers and
per-sample seeds, read two ways through mixtrain's one split factory:

  (f) folder: ``dataset=imagefolder`` (streaming, one file a sample);
  (s) shards: ``dataset=webdataset`` over the shards ``mixtrain shards`` wrote from (f).

Two data sets: the 10k CIFAR-10 JPEG subset (32 px, 1,000 a class) and "photos": 2,000 of
its images upscaled to 320 px JPEGs (quality 90), read at 160 px. No real photo folder is on
these machines; the upscaled set has photo-sized files and decode cost, not photo content.
A pass is one training epoch of the loader alone (no model), in img/s. The two are measured
in interleaved rounds (the machine is shared and its speed drifts); the ratio (s)/(f) is
taken within each round and its median is compared with the target: >= 1.0 (shards not
slower on local disk).

    python bench/shards.py [--rounds 3] [--workers 2] [--batch 128]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from common import cifar10_jpeg_root, median
from PIL import Image

from mixtrain.data import LoaderOptions, WebDatasetConfig, open_split
from mixtrain.data.folder import FolderConfig
from mixtrain.data.shard_writer import write_shards


def cache_dir() -> Path:
    base = Path(os.path.expanduser(os.environ.get("MIXTRAIN_DATA", "~/.cache/mixtrain/data")))
    return base / "bench-shards"


def subset(src: Path, dst: Path, per_class: int, size: int = 0) -> Path:
    """The first ``per_class`` train images of each class (all of val: a tenth as many), linked or upscaled."""
    if (dst / "done").exists():
        return dst
    for split, count in (("train", per_class), ("val", max(1, per_class // 10))):
        for cls in sorted(p.name for p in (src / ("test" if split == "val" else "train")).iterdir()):
            out = dst / split / cls
            out.mkdir(parents=True, exist_ok=True)
            for path in sorted((src / ("test" if split == "val" else "train") / cls).iterdir())[:count]:
                if size:
                    Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC).save(out / path.name,
                                                                                            quality=90)
                else:
                    (out / path.name).symlink_to(path.resolve())
    (dst / "done").touch()
    return dst


def shards_of(folder: Path) -> tuple:
    out = folder.parent / (folder.name + "-shards")
    if not (out / "_info.json").exists():
        t = time.perf_counter()
        write_shards(folder, out, ["train", "val"], per_shard=1000)
        print(f"wrote {out} in {time.perf_counter() - t:.1f} s", flush=True)
    train = sorted(p.name for p in out.glob("train-*.tar"))
    val = sorted(p.name for p in out.glob("val-*.tar"))
    brace = lambda names, split: f"{out}/{split}-{{000000..{len(names) - 1:06d}}}.tar"  # noqa: E731
    return brace(train, "train"), brace(val, "val")


def img_per_s(cfg, options: LoaderOptions) -> float:
    loader = open_split(cfg, "train", True, options).loader
    loader.set_epoch(0)
    t, n = time.perf_counter(), 0
    for images, _ in loader:
        n += len(images)
    return n / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    src = cifar10_jpeg_root()
    sets = {"cifar 10k, 32 px": (subset(src, cache_dir() / "cifar10k", 1000), 32),
            "photos 2k, 320 px -> 160": (subset(src, cache_dir() / "photos2k", 200, size=320), 160)}
    options = LoaderOptions(args.batch, num_workers=args.workers, seed=0)
    ok = True
    for name, (folder, size) in sets.items():
        train_urls, val_urls = shards_of(folder)
        common = dict(image_size=size, scale=[0.35, 1.0])
        folder_cfg = FolderConfig(root=str(folder), **common)
        shard_cfg = WebDatasetConfig(train_urls=train_urls, val_urls=val_urls, **common)
        ratios, rates = [], {"folder": [], "shards": []}
        for r in range(args.rounds):
            f, s = img_per_s(folder_cfg, options), img_per_s(shard_cfg, options)
            rates["folder"].append(f)
            rates["shards"].append(s)
            ratios.append(s / f)
            print(f"  {name} round {r}: folder {f:.0f} img/s, shards {s:.0f} img/s, ratio {s / f:.2f}", flush=True)
        ratio = median(ratios)
        ok &= ratio >= 1.0
        print(f"{name}: folder {median(rates['folder']):.0f} img/s, shards {median(rates['shards']):.0f} img/s, "
              f"shards/folder {ratio:.2f}x (target >= 1.0: {'met' if ratio >= 1.0 else 'MISSED'})", flush=True)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
