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
import os
import shlex
import shutil
import stat
import tarfile
import tempfile
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


def write_split(root: Path, split: str, out: Path, per_shard: int, shown: Path) -> Tuple[List[str], dict]:
    """Shards of one split into ``out`` (said as ``shown``); ``(classes, the split's entry of _info.json)``."""
    folder = open_image_folder(str(root), split, "--splits")
    samples = [(i, path, label) for i, (path, label) in enumerate(folder.samples)]
    names, lengths = [], []
    for start in range(0, len(samples), per_shard):
        name = f"{split}-{start // per_shard:06d}.tar"
        write_shard(out / name, samples[start:start + per_shard])
        names.append(name)
        lengths.append(len(samples[start:start + per_shard]))
        print(f"{shown / name}: {lengths[-1]} samples", flush=True)
    return list(folder.classes), {"name": split, "num_samples": len(samples), "filenames": names,
                                  "shard_lengths": lengths}


SET_FILES = ("_info.json", "classes.json")  # with every *.tar: what a shard set is
STAGING = ".shards-new"  # a set being written beside OUT: .<OUT>.shards-new-XXXX


def is_set_file(name: str) -> bool:
    return name.endswith(".tar") or name in SET_FILES


def write_shards(root: Path, out: Path, splits: Sequence[str], per_shard: int, overwrite: bool = False) -> dict:
    """Every split of ``root`` as shards in ``out``; returns ``_info.json``.

    The new set is written whole beside ``out`` and then swapped in for the old one, so that a write
    that fails (a class check, a full disk, a kill) leaves the old set as it was, and a set with fewer
    shards leaves none of the old ones behind.
    """
    if not root.is_dir():
        raise MixtrainError(f"{root} is not a folder: give an ImageFolder root (ROOT/<split>/<class>/<image>)")
    if per_shard < 1:
        raise MixtrainError(f"--per-shard must be >= 1 (got {per_shard})")
    held = sorted(p.name for p in out.glob("*.tar")) + [n for n in ("_info.json",) if (out / n).exists()]
    if held and not overwrite:
        raise MixtrainError(f"{out} already holds shards ({held[0]}, ...): pick another OUT, or pass --overwrite")
    if not claim_dir(out):
        raise MixtrainError(f"{out} is being written by another mixtrain process: pick another OUT")
    for orphan in out.parent.glob(f".{out.name}{STAGING}-*"):  # a killed writer's: we hold OUT's claim
        shutil.rmtree(orphan, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING}-", dir=out.parent))
    try:
        info: dict = {"name": root.name, "splits": {}}
        classes = None
        for split in splits:
            split_classes, entry = write_split(root, split, staging, per_shard, shown=out)
            if classes is not None and split_classes != classes:
                raise MixtrainError(f"the splits' class folders differ ({split}): give every split the same class "
                                    f"folders (nothing in {out} was changed)")
            classes, info["splits"][split] = split_classes, entry
        info["classes"], info["num_classes"] = classes, len(classes)
        write_json_atomic(staging / "_info.json", info)
        write_json_atomic(staging / "classes.json", {"classes": classes})
        swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def swap_in(staging: Path, out: Path) -> None:
    """``staging`` becomes ``out`` by two renames; what ``out`` held besides its shard set moves along."""
    os.chmod(staging, stat.S_IMODE(out.stat().st_mode))  # OUT's own mode, not mkdtemp's 0700
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.shards-old-", dir=out.parent))
    os.rename(out, old / "set")
    os.rename(staging, out)
    for entry in (old / "set").iterdir():
        if not is_set_file(entry.name):
            os.rename(entry, out / entry.name)
    shutil.rmtree(old)


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
    # Hydra reads `{` as a dict: the URLs go in double quotes, the whole override quoted for the shell.
    line = " ".join(shlex.quote(f'dataset.{"train" if name == "train" else "val"}_urls="{url}"')
                    for name, url in urls.items())
    print(f"{len(info['classes'])} classes; train with: mixtrain train dataset=webdataset {line}")
    return 0
