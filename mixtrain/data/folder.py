"""ImageNet-style folders: ``<root>/<split>/<class>/<image>``.

Two paths. The streaming path is torchvision's ``ImageFolder`` read sample by sample
(:mod:`mixtrain.data.streaming`) with timm's transforms (:mod:`mixtrain.data.transforms`).
The cached path (``dataset.cache=true``, for small images) decodes every image once into a
uint8 tensor for :class:`~mixtrain.data.device_loader.DeviceLoader`.

Every image becomes RGB (:mod:`mixtrain.data.images`). A file that cannot be read never stops a
run mid-epoch: with ``dataset.on_bad_image=skip`` (the default) the cached path leaves it out and
the streaming path serves around it; with ``error`` the run stops before training, listing the
files.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import MISSING
from PIL import Image
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_jpeg

from mixtrain.config.dataset import StreamedConfig
from mixtrain.config.errors import require
from mixtrain.data.images import UNREADABLE, load_rgb, open_regular, read_bytes
from mixtrain.data.label_noise import corrupt_folder_labels
from mixtrain.data.source import LoaderOptions, Split, device_split, register_source
from mixtrain.data.streaming import CheckedItems, stream_split
from mixtrain.data.transforms import square_resize, stream_transform
from mixtrain.errors import MixtrainError


@dataclass
class FolderConfig(StreamedConfig):
    """An ImageNet-style folder: ``<root>/<train_split>/<class>/*.jpg`` and the same for val."""

    name: str = "imagefolder"
    root: str = MISSING  # the folder holding one subfolder per split
    train_split: str = "train"  # the training split's subfolder
    val_split: str = "val"  # the validation split's subfolder
    # Decode every image once into a uint8 tensor on the device and augment there
    # (crop with padding + flip, as for CIFAR). Meant for small images.
    cache: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.auto_augment is not None:
            require(not self.cache, "dataset.auto_augment",
                    "needs dataset.cache=false (the cached path augments on the device: crop and flip only)",
                    self.auto_augment)
        require(self.train_split != self.val_split, "dataset.val_split", "must differ from dataset.train_split",
                self.val_split)

    def split_name(self, split: str) -> str:
        """``train`` and ``val`` are ``train_split`` and ``val_split``; any other name is a folder of its own."""
        return {"train": self.train_split, "val": self.val_split}.get(split, split)

    @property
    def streams(self) -> bool:
        return not self.cache


class CheckedImageFolder(CheckedItems, datasets.ImageFolder):
    """An ImageFolder whose items are :class:`CheckedItems`' (an unreadable file is replaced, and named)."""

    def __init__(self, root: str, transform=None, train: bool = True) -> None:
        datasets.ImageFolder.__init__(self, root, transform=transform, loader=load_rgb)
        self.train = train

    def read(self, index: int) -> Tuple[Image.Image, int]:
        path, label = self.samples[index]
        return self.loader(path), label

    def name(self, index: int) -> str:
        return self.samples[index][0]

    def labels(self) -> Optional[torch.Tensor]:
        return torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def make_dataset(self, directory: str, class_to_idx, extensions=None, is_valid_file=None,
                     allow_empty: bool = False) -> List[Tuple[str, int]]:
        """torchvision's walk, except that each real folder is read once (a symlink loop adds
        nothing) and an empty class folder is named in the error."""
        samples = []
        for name, label in sorted(class_to_idx.items(), key=lambda item: item[1]):
            seen, found = set(), 0
            top = os.path.realpath(os.path.join(directory, name))
            for folder, subfolders, files in os.walk(os.path.join(directory, name), followlinks=True):
                real = os.path.realpath(folder)
                if real in seen or top.startswith(real + os.sep):  # seen, or a link back to an ancestor
                    subfolders[:] = []
                    continue
                seen.add(real)
                subfolders.sort()
                for file in sorted(files):
                    if file.lower().endswith(datasets.folder.IMG_EXTENSIONS):
                        samples.append((os.path.join(folder, file), label))
                        found += 1
            if not found:
                raise MixtrainError(f"no images in class folder {os.path.join(directory, name)} "
                                    f"({', '.join(datasets.folder.IMG_EXTENSIONS[:4])}, ...): add images or remove it")
        return samples


def open_image_folder(root: str, split: str, key: str, transform=None, train: bool = True) -> CheckedImageFolder:
    """The ImageFolder of one split; ``key`` names the config key that chose the split."""
    path = os.path.join(os.path.expanduser(root), split)
    if not os.path.isdir(path):
        raise MixtrainError(f"dataset folder {path} does not exist: check dataset.root and {key}")
    try:
        return CheckedImageFolder(path, transform=transform, train=train)
    except (FileNotFoundError, RuntimeError) as ex:
        raise MixtrainError(f"no images in {path} ({str(ex).splitlines()[0]}): expected {path}/<class>/<image>") from None


def unreadable_files(dataset: datasets.ImageFolder) -> List[str]:
    """Every file of ``dataset`` that does not decode (a full pass: for on_bad_image=error)."""
    bad = []
    for path, _ in dataset.samples:
        try:
            load_rgb(path)
        except UNREADABLE:
            bad.append(path)
    return bad


def bad_image_error(paths: Sequence[str]) -> MixtrainError:
    shown = ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else "")
    return MixtrainError(f"{len(paths)} unreadable image(s) (dataset.on_bad_image=error): {shown}; "
                         "repair or remove them, or set dataset.on_bad_image=skip")


def check_same_classes(train: Sequence[str], val: Sequence[str]) -> None:
    if list(train) != list(val):
        only_train = sorted(set(train) - set(val))
        only_val = sorted(set(val) - set(train))
        # The same name in two Unicode forms (NFC and NFD: folders copied from macOS) prints the same:
        # show the code points, and say so.
        def nfc(names):
            return {unicodedata.normalize("NFC", name) for name in names}

        forms = nfc(only_train) & nfc(only_val)
        show = (lambda names: "[" + ", ".join(map(ascii, names)) + "]") if forms else str
        fix = ("the same names in two Unicode forms (NFC and NFD): rename the folders to one form" if forms else
               "give both splits the same class folders")
        listed = [show(names[:5]) if names else "none" for names in (only_train, only_val)]
        raise MixtrainError(f"train and val class folders differ (only in train: {listed[0]}; only in val: "
                            f"{listed[1]}): {fix}")


def decode_folder(dataset: datasets.ImageFolder, image_size: int,
                  interpolation: str = "bilinear") -> Tuple[torch.Tensor, torch.Tensor, List[str], int]:
    """Every readable image of an ImageFolder as uint8 ``[N, 3, S, S]`` (resized if not S x S),
    its labels, the paths of the files that could not be read (left out), and the longest
    side of any image as stored (to tell when every image is being enlarged)."""
    resize = square_resize(image_size, interpolation)
    images, labels, bad, longest = [], [], [], 0
    chunk = 4096
    for start in range(0, len(dataset.samples), chunk):
        part = dataset.samples[start:start + chunk]
        try:  # the fast path: one batched libjpeg call (most folders of small images)
            decoded = decode_jpeg([read_bytes(p) for p, _ in part], mode=ImageReadMode.RGB,
                                  apply_exif_orientation=True)
        except (RuntimeError, OSError):  # not all JPEG, or a broken one: file by file through PIL
            decoded = []
            for path, _ in part:
                try:
                    decoded.append(torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1))
                except UNREADABLE:
                    decoded.append(None)
        for (path, label), image in zip(part, decoded):
            if image is None:
                bad.append(path)
                continue
            longest = max(longest, *image.shape[-2:])
            images.append(image if tuple(image.shape[-2:]) == (image_size, image_size) else resize(image))
            labels.append(label)
    if not images:
        raise MixtrainError(f"no readable images in {dataset.root}: expected <class>/<image> files")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), bad, longest

# --------------------------------------------------------------------------- the source


def open_folder(cfg: FolderConfig, split: str, train: bool, options: LoaderOptions) -> Split:
    folder = cfg.split_name(split)
    key = {cfg.train_split: "dataset.train_split", cfg.val_split: "dataset.val_split"}.get(folder, "heldout")
    if not cfg.streams:
        dataset = open_image_folder(cfg.root, folder, key, train=train)
        images, labels, bad, stored = decode_folder(dataset, cfg.size(train), cfg.interpolation)
        return device_split(cfg, images, labels, list(dataset.classes), train, options, bad, stored)
    dataset = open_image_folder(cfg.root, folder, key, stream_transform(cfg, train), train)
    skipped = unreadable_files(dataset) if cfg.on_bad_image == "error" else []  # a full decoding pass
    changed = corrupt_folder_labels(dataset, cfg.label_noise, options.seed) if train else 0
    split = stream_split(cfg, dataset, train, options, skipped, changed)
    split.note = cache_hint(cfg, dataset) if train else ""
    return split


CACHE_HINT_PX = 64  # a streamed folder whose images are at most this size gets the hint of cache_hint
# Cached against streaming wall time, CIFAR-10 10k at 32 px, resnet18, 2 epochs, 2-core CPU: 1.27x in
# fp32, 1.24x in bf16 (bench/vs_timm.py, 2026-11-30; docs/results/speed.md).
CACHE_SPEEDUP = 1.25


def cache_hint(cfg: FolderConfig, dataset: CheckedImageFolder, checked: int = 64) -> str:
    """A note when a streamed folder's images are small enough to cache (read from the headers of
    ``checked`` files spread over the split): what ``dataset.cache=true`` gains, and what it changes."""
    if cfg.auto_augment is not None or not dataset.samples:
        return ""
    sizes = []
    for path, _ in dataset.samples[::max(1, len(dataset.samples) // checked)][:checked]:
        try:
            with open_regular(path) as f, Image.open(f) as image:
                sizes.append(image.size)
        except UNREADABLE:
            continue
    if not sizes or max(max(size) for size in sizes) > CACHE_HINT_PX:
        return ""
    width, height = max(w for w, _ in sizes), max(h for _, h in sizes)
    megabytes = len(dataset.samples) * width * height * 3 / 2**20
    if megabytes > 4096:
        return ""
    return (f"the {len(sizes)} images checked are at most {width}x{height} px: dataset.cache=true decodes the split "
            f"once into memory (about {megabytes:.0f} MB) and trains about {CACHE_SPEEDUP}x as fast (CIFAR-10 at 32 px, "
            "bench/vs_timm.py), with CIFAR-style crop + flip (dataset.crop_padding) instead of RandomResizedCrop")


register_source("folder", FolderConfig, open_folder, names=("imagefolder",))
