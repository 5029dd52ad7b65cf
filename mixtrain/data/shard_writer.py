"""``mixtrain shards ROOT OUT``: an ImageFolder's splits as WebDataset shards, with ``_info.json``.

Each split (``ROOT/train``, ``ROOT/val``, or ``--splits``) becomes ``OUT/<split>-000000.tar``, ...,
``--per-shard`` samples each, in the folder's order (classes sorted, files sorted): member
``<key>.<ext>`` holds the file's bytes as they are (nothing is decoded or re-encoded), ``<key>.cls``
its class index. ``OUT/_info.json`` (timm's layout: each split's ``filenames``, ``shard_lengths`` and
``num_samples``, and the ``classes``) and ``OUT/classes.json`` say what the shards hold. The same
input gives the same bytes: tar headers carry no time, owner or permissions of the files.
Train with ``dataset=webdataset dataset.train_urls='OUT/train-{000000..000NNN}.tar' ...`` (the
command prints the line).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import List, Sequence, Tuple

from mixtrain.data.folder import open_image_folder
from mixtrain.errors import CommandParser, MixtrainError
from mixtrain.files import claim_dir, write_atomic, write_json_atomic

USAGE = """usage: mixtrain shards ROOT OUT [--splits train val] [--per-shard 1000] [--overwrite]

Write the ImageFolder splits ROOT/<split>/<class>/<image> as WebDataset shards in OUT, with
_info.json and classes.json, for dataset=webdataset.
"""


def tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """A member with no time, owner or permissions of its own: the same input, the same bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: Sequence[Tuple[int, str, int]]) -> None:
    """One tar: for each ``(index, file, label)``, ``<index>.<ext>`` and ``<index>.cls``."""
    def write(f) -> None:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for index, file, label in samples:
                key = f"{index:09d}"
                tar_member(tar, f"{key}.{Path(file).suffix.lower().lstrip('.')}", Path(file).read_bytes())
                tar_member(tar, f"{key}.cls", str(label).encode())

    write_atomic(path, write, binary=True)


def write_split(root: Path, split: str, out: Path, per_shard: int) -> Tuple[List[str], dict]:
    """Shards of one split; ``(classes, the split's entry of _info.json)``."""
    folder = open_image_folder(str(root), split, "--splits")
    samples = [(i, path, label) for i, (path, label) in enumerate(folder.samples)]
    names, lengths = [], []
    for start in range(0, len(samples), per_shard):
        name = f"{split}-{start // per_shard:06d}.tar"
        write_shard(out / name, samples[start:start + per_shard])
        names.append(name)
        lengths.append(len(samples[start:start + per_shard]))
        print(f"{out / name}: {lengths[-1]} samples", flush=True)
    return list(folder.classes), {"name": split, "num_samples": len(samples), "filenames": names,
                                  "shard_lengths": lengths}


def write_shards(root: Path, out: Path, splits: Sequence[str], per_shard: int, overwrite: bool = False) -> dict:
    """Every split of ``root`` as shards in ``out``; returns ``_info.json``."""
    if not root.is_dir():
        raise MixtrainError(f"{root} is not a folder: give an ImageFolder root (ROOT/<split>/<class>/<image>)")
    if per_shard < 1:
        raise MixtrainError(f"--per-shard must be >= 1 (got {per_shard})")
    held = sorted(p.name for p in out.glob("*.tar")) + [n for n in ("_info.json",) if (out / n).exists()]
    if held and not overwrite:
        raise MixtrainError(f"{out} already holds shards ({held[0]}, ...): pick another OUT, or pass --overwrite")
    if not claim_dir(out):
        raise MixtrainError(f"{out} is being written by another mixtrain process: pick another OUT")
    info: dict = {"name": root.name, "splits": {}}
    classes = None
    for split in splits:
        split_classes, entry = write_split(root, split, out, per_shard)
        if classes is not None and split_classes != classes:
            raise MixtrainError(f"the splits' class folders differ ({split}): give every split the same class folders")
        classes, info["splits"][split] = split_classes, entry
    info["classes"], info["num_classes"] = classes, len(classes)
    write_json_atomic(out / "_info.json", info)
    write_json_atomic(out / "classes.json", {"classes": classes})
    return info


def brace(split: dict, out: Path) -> str:
    last = len(split["filenames"]) - 1
    return f"{out}/{split['name']}-{{000000..{last:06d}}}.tar"


def main(args: Sequence[str]) -> int:
    parser = CommandParser("mixtrain shards", USAGE, "mixtrain shards ROOT OUT [--splits ...] [--per-shard N]")
    parser.add_argument("root", nargs="?", type=Path)
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--splits", nargs="+", default=None)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--overwrite", action="store_true")
    parsed = parser.parse(args)
    if parsed is None:
        return 0
    if parsed.root is None or parsed.out is None:
        raise MixtrainError("give the ImageFolder root and the output dir: mixtrain shards ROOT OUT")
    root, out = parsed.root.expanduser(), parsed.out.expanduser()
    splits = parsed.splits or [name for name in ("train", "val") if (root / name).is_dir()]
    info = write_shards(root, out, splits, parsed.per_shard, parsed.overwrite)
    urls = {name: brace(split, out) for name, split in info["splits"].items()}
    # Hydra reads `{` as a dict: the URLs go in double quotes, the whole override in single quotes.
    line = " ".join(f"'dataset.{'train' if name == 'train' else 'val'}_urls=\"{url}\"'" for name, url in urls.items())
    print(f"{len(info['classes'])} classes; train with: mixtrain train dataset=webdataset {line}")
    return 0
