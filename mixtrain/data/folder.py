"""ImageNet-style folders: ``<root>/<split>/<class>/<image>``.

Two paths. The streaming path is torchvision's ``ImageFolder`` with the usual
transforms in DataLoader workers (RandomResizedCrop + flip for training, resize +
center crop for evaluation); workers return uint8 and the batch is normalized on the
device. The cached path (``dataset.cache=true``, for small images) decodes every
image once into a uint8 tensor for :class:`~mixtrain.data.device_loader.DeviceLoader`.

Every image becomes RGB (grayscale, CMYK, palette and RGBA files included). A file
that cannot be read never stops a run mid-epoch: with ``dataset.on_bad_image=skip``
(the default) the cached path leaves it out, and the streaming path serves another
image in its place (for evaluation, one marked :data:`IGNORE_LABEL`, which the metrics
leave out); with ``error`` the run stops before training, listing the files.
"""

from __future__ import annotations

import os
import warnings
from typing import Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from mixtrain.data.device_loader import epoch_generator, normalize, normalizer
from mixtrain.errors import MixtrainError

IGNORE_LABEL = -1  # an evaluation sample that stands in for an unreadable file


def load_rgb(path: str) -> Image.Image:
    """Decode a file fully (a truncated file fails here, not later) and convert it to RGB."""
    with warnings.catch_warnings():
        # "Palette images with Transparency expressed in bytes should be converted to RGBA"
        warnings.simplefilter("ignore", UserWarning)
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()
            return image.convert("RGB")


class CheckedImageFolder(datasets.ImageFolder):
    """An ImageFolder whose items are ``(image, label, bad_index)``; ``bad_index`` is -1 or the
    index of an unreadable file this item replaces (the main process collects them)."""

    def __init__(self, root: str, transform=None, train: bool = True) -> None:
        super().__init__(root, transform=transform, loader=load_rgb)
        self.train = train

    def __getitem__(self, index: int):
        for offset in range(len(self.samples)):
            try:
                image, label = super().__getitem__((index + offset) % len(self.samples))
            except (OSError, ValueError, SyntaxError):  # what PIL raises for broken files
                continue
            if offset == 0:
                return image, label, -1
            return image, (label if self.train else IGNORE_LABEL), index
        raise MixtrainError(f"no readable image in {self.root}")


def open_split(root: str, split: str, key: str, transform=None, train: bool = True) -> CheckedImageFolder:
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
        except (OSError, ValueError, SyntaxError):
            bad.append(path)
    return bad


def bad_image_error(paths: Sequence[str]) -> MixtrainError:
    shown = ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else "")
    return MixtrainError(f"{len(paths)} unreadable image(s) (dataset.on_bad_image=error): {shown}; "
                         "repair or remove them, or set dataset.on_bad_image=skip")


def check_same_classes(train: datasets.ImageFolder, val: datasets.ImageFolder) -> None:
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise MixtrainError(
            f"train and val class folders differ (only in train: {only_train[:5] or 'none'}; only in val: "
            f"{only_val[:5] or 'none'}): give both splits the same class folders"
        )


def train_transform(image_size: int, scale: Sequence[float], auto_augment: Optional[str] = None,
                    mean: Sequence[float] = (0.485, 0.456, 0.406)) -> v2.Compose:
    steps = [v2.RandomResizedCrop(image_size, scale=tuple(scale), antialias=True), v2.RandomHorizontalFlip()]
    if auto_augment:
        steps.append(auto_augment_transform(auto_augment, image_size, mean))
    return v2.Compose([*steps, v2.PILToTensor()])


def auto_augment_transform(policy: str, image_size: int, mean: Sequence[float]):
    """timm's RandAugment / AugMix / AutoAugment on PIL images, with the hparams of timm's create_transform."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform as timm_auto_augment
    from timm.data.auto_augment import rand_augment_transform

    hparams = dict(translate_const=int(image_size * 0.45), img_mean=tuple(min(255, round(255 * m)) for m in mean))
    if policy.startswith("augmix"):
        hparams["translate_pct"] = 0.3
    make = (rand_augment_transform if policy.startswith("rand")
            else augment_and_mix_transform if policy.startswith("augmix") else timm_auto_augment)
    try:
        return make(policy, hparams)
    except (AssertionError, KeyError, ValueError, IndexError) as ex:
        raise MixtrainError(f"dataset.auto_augment={policy!r} is not a timm policy string ({ex or type(ex).__name__}): "
                            f"use e.g. rand-m9-mstd0.5-inc1, augmix-m5-w4-d2 or original") from None


def eval_transform(image_size: int, crop_pct: float) -> v2.Compose:
    return v2.Compose([
        v2.Resize(int(round(image_size / crop_pct)), antialias=True),
        v2.CenterCrop(image_size),
        v2.PILToTensor(),
    ])


class FolderLoader:
    """A DataLoader over an ImageFolder whose uint8 batches are normalized on the device."""

    def __init__(self, dataset: datasets.ImageFolder, batch_size: int, train: bool, device: torch.device,
                 mean: Sequence[float], std: Sequence[float], num_workers: int, channels_last: bool,
                 seed: int, rank: int = 0, world_size: int = 1, max_batches: Optional[int] = None) -> None:
        self.dataset = dataset
        self.device = device
        self.channels_last = channels_last
        self.seed, self.rank = seed, rank
        self.max_batches = max_batches
        self.generator = torch.Generator()
        # Training: a fresh shuffle per epoch, sharded across ranks. Evaluation: a strided
        # shard with no padding, so that no sample is counted twice across ranks.
        self.sampler = (DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                           seed=seed, drop_last=True)
                        if train else range(rank, len(dataset), world_size))
        if train and len(self.sampler) < batch_size:
            raise MixtrainError(
                f"trainer.batch_size ({batch_size}) is larger than the training set per process "
                f"({len(self.sampler)} images): lower trainer.batch_size"
            )
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, num_workers=num_workers,
            pin_memory=device.type == "cuda", drop_last=train, generator=self.generator,
            persistent_workers=num_workers > 0,
        )
        self.scale, self.shift = normalizer(mean, std, device)
        self.unreadable: Set[str] = set()  # files replaced so far (reported once by the run)
        self.set_epoch(0)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        return len(self.loader) if self.max_batches is None else min(len(self.loader), self.max_batches)

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        # Seeds the workers' augmentation streams (when workers start, i.e. every
        # epoch unless they are persistent).
        self.generator.manual_seed(epoch_generator(self.seed + self.rank, epoch).initial_seed())

    def iter_from(self, start_step: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for step, (images, labels, bad) in enumerate(self.loader):
            if step >= len(self):
                break
            if step < start_step:
                continue
            if (bad >= 0).any():
                self.unreadable.update(self.dataset.samples[int(i)][0] for i in bad[bad >= 0])
            images = images.to(self.device, non_blocking=True)
            yield normalize(images, self.scale, self.shift, self.channels_last), labels.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)


def decode_folder(dataset: datasets.ImageFolder, image_size: int) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """Every readable image of an ImageFolder as uint8 ``[N, 3, S, S]`` (resized if not S x S),
    its labels, and the paths of the files that could not be read (left out)."""
    resize = v2.Resize((image_size, image_size), antialias=True)
    images, labels, bad = [], [], []
    chunk = 4096
    for start in range(0, len(dataset.samples), chunk):
        part = dataset.samples[start:start + chunk]
        blobs = [torch.frombuffer(bytearray(open(p, "rb").read()), dtype=torch.uint8) for p, _ in part]
        try:  # the fast path: one batched libjpeg call (most folders of small images)
            decoded = decode_jpeg(blobs, mode=ImageReadMode.RGB)
        except RuntimeError:  # not all JPEG, or a broken one: file by file through PIL
            decoded = []
            for path, _ in part:
                try:
                    decoded.append(torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1))
                except (OSError, ValueError, SyntaxError):
                    decoded.append(None)
        for (path, label), image in zip(part, decoded):
            if image is None:
                bad.append(path)
                continue
            images.append(image if tuple(image.shape[-2:]) == (image_size, image_size) else resize(image))
            labels.append(label)
    if not images:
        raise MixtrainError(f"no readable images in {dataset.root}: expected <class>/<image> files")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), bad
