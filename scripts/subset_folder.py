"""Make a class-balanced subset of an ImageNet-style folder, as symbolic links.

The first PER_CLASS images (sorted by file name) of every class of the train split are
linked into DST/<train>/<class>/, and the validation split is linked whole, so nothing is
copied. With the shared CIFAR-10 JPEG folder and 1000 per class this gives the 10,000-image
set of the evidence study (docs/evidence), a superset of the bundled set's 500 per class:

    python scripts/subset_folder.py ~/.cache/mixtrain/data/cifar10-jpeg \
        ~/.cache/mixtrain/data/cifar10-jpeg-10k --per-class 1000

``--classes a,b,c`` keeps those classes only (their validation folders linked one by one), as the
transfer study does (scripts/transfer_study.sh: classes 0-4 to pretrain, 5-9 to fine-tune).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--per-class", type=int, required=True)
    parser.add_argument("--train", default="train")
    parser.add_argument("--val", default="test")
    parser.add_argument("--classes", default=None, help="a comma-separated list of the classes to keep (default: all)")
    args = parser.parse_args(argv)
    src, dst = args.src.expanduser().resolve(), args.dst.expanduser()
    if not (src / args.train).is_dir() or not (src / args.val).is_dir():
        print(f"error: {src} needs {args.train}/ and {args.val}/ folders: point src at the extracted dataset",
              file=sys.stderr)
        return 2
    if dst.exists():
        print(f"error: {dst} exists: remove it or pick another destination", file=sys.stderr)
        return 2
    classes = sorted(p.name for p in (src / args.train).iterdir() if p.is_dir())
    if args.classes:
        unknown = sorted(set(args.classes.split(",")) - set(classes))
        if unknown:
            print(f"error: no class folder {', '.join(unknown)} in {src / args.train}: pick from {', '.join(classes)}",
                  file=sys.stderr)
            return 2
        classes = [c for c in classes if c in args.classes.split(",")]
    for name in classes:
        files = sorted(p for p in (src / args.train / name).iterdir() if p.is_file())[: args.per_class]
        out = dst / args.train / name
        out.mkdir(parents=True)
        for path in files:
            (out / path.name).symlink_to(path)
    if args.classes:
        (dst / args.val).mkdir()
        for name in classes:
            (dst / args.val / name).symlink_to(src / args.val / name, target_is_directory=True)
    else:
        (dst / args.val).symlink_to(src / args.val, target_is_directory=True)
    print(f"{dst}: {len(classes)} classes, up to {args.per_class} training images each; {args.val}/ -> {src / args.val}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
