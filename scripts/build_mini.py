"""Build the bundled offline dataset ``mixtrain/data/cifar10_mini.npz``.

It holds real CIFAR-10 images taken from the shared JPEG copy of CIFAR-10: the
first TRAIN_PER_CLASS images (sorted by file name) of every class of its train split
and the first VAL_PER_CLASS of its test split. The JPEG bytes are copied as they are
(no re-encoding), so the file is small and the pixels are the source's pixels.

    python scripts/build_mini.py [--tarball ../shared/datasets/cifar10-jpeg.tar.gz]
"""

from __future__ import annotations

import argparse
import hashlib
import tarfile
from pathlib import Path

import numpy as np

TRAIN_PER_CLASS = 500
VAL_PER_CLASS = 100
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TARBALL = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
OUT = ROOT / "mixtrain" / "data" / "cifar10_mini.npz"


def select(files: dict, split: str, per_class: int, classes: list) -> tuple:
    """The first ``per_class`` images of each class of ``split``, as (bytes, offsets, labels)."""
    blobs, labels = [], []
    for label, name in enumerate(classes):
        chosen = sorted(path for path in files if path[1] == split and path[2] == name)[:per_class]
        if len(chosen) < per_class:
            raise SystemExit(f"{split}/{name} has {len(chosen)} images, need {per_class}")
        blobs += [files[path] for path in chosen]
        labels += [label] * len(chosen)
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets, np.asarray(labels, dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tarball", type=Path, default=DEFAULT_TARBALL)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    # One streaming pass: random access into a .tar.gz re-reads it from the start.
    files = {}  # ("cifar10-jpeg", split, class, file) -> JPEG bytes
    with tarfile.open(args.tarball, mode="r|gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) == 4 and parts[3].endswith(".jpg"):
                files[parts] = tar.extractfile(member).read()
    classes = sorted({path[2] for path in files})
    train = select(files, "train", TRAIN_PER_CLASS, classes)
    val = select(files, "test", VAL_PER_CLASS, classes)

    np.savez(
        args.out,
        classes=np.asarray(classes),
        train_jpeg=train[0], train_offsets=train[1], train_labels=train[2],
        val_jpeg=val[0], val_offsets=val[1], val_labels=val[2],
    )
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()[:16]
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, sha256 {digest}): "
          f"{len(train[2])} train + {len(val[2])} val images, classes {', '.join(classes)}")


if __name__ == "__main__":
    main()
