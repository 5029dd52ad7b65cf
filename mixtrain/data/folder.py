"""ImageNet-style folders: ``<root>/<split>/<class>/<image>``.

Two paths. The streaming path is torchvision's ``ImageFolder`` with the usual
transforms in DataLoader workers (RandomResizedCrop + flip for training, resize +
center crop for evaluation); workers return uint8 and the batch is normalized on the
device. The cached path (``dataset.cache=true``, for small images) decodes every
image once into a uint8 tensor for :class:`~mixtrain.data.device_loader.DeviceLoader`.

Every random choice of a training image is drawn from a seed of its own, a function of
(run seed, epoch, position in the epoch): the batches of an epoch are the same whatever
the number of workers, whether they persist, and where a resumed run starts.

Every image becomes RGB (grayscale, CMYK, palette and RGBA files included). A file
that cannot be read never stops a run mid-epoch: with ``dataset.on_bad_image=skip``
(the default) the cached path leaves it out, and the streaming path serves the next
readable image in its place for training and drops it from evaluation batches (no
stand-in ever reaches a metric); with ``error`` the run stops before training, listing
the files.
"""

from __future__ import annotations

import contextlib
import os
import random
import stat
import unicodedata
import warnings
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from omegaconf import MISSING
from PIL import ExifTags, Image, ImageOps
from torch.utils.data import DataLoader, Sampler
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from mixtrain.config.dataset import StreamedConfig
from mixtrain.config.errors import require
from mixtrain.data.device_loader import epoch_generator, normalize, normalizer
from mixtrain.data.label_noise import corrupt_folder_labels
from mixtrain.data.sampling import epoch_positions, repeated
from mixtrain.data.source import LoaderOptions, Split, device_split, erasing, register_source
from mixtrain.errors import MixtrainError
from mixtrain.files import forget_inherited_claims


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


IGNORE_LABEL = -1  # an evaluation sample that stands in for an unreadable file (dropped from its batch)
# What PIL raises for a broken, truncated, non-image or too-large file (DecompressionBombError
# is an Exception of its own, not an OSError).
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def open_regular(path: str):
    """``path`` opened to read, if it is a regular file; else an OSError (an unreadable file). A FIFO
    named x.jpg would block ``open()`` until something writes to it, a device such as /dev/zero would
    never end: only regular files are images (opened without blocking, then checked)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # no effect on a regular file's reads
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise OSError(f"not a regular file (a FIFO, a device or a socket): {path}")
    return f


def load_rgb(path: str) -> Image.Image:
    """Decode a file fully (a truncated file fails here, not later) and convert it to RGB."""
    with warnings.catch_warnings():
        # "Palette images with Transparency expressed in bytes should be converted to RGBA"
        warnings.simplefilter("ignore", UserWarning)
        with open_regular(path) as f:
            image = Image.open(f)
            image.load()
            return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode PIL reads, upright. PIL's own ``convert("RGB")`` clips 16-bit grey (mode
    ``I;16``, or ``I`` from a 16-bit file) at 255, so most of such an image turns white: its top
    8 bits are kept instead. A float image (mode ``F``) has no range to scale from: it is refused
    (and counted and named as unreadable, as a broken file is). A camera's EXIF orientation is
    applied (``ImageOps.exif_transpose``, as torchvision's and timm's readers do)."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode == "I":
        pixels = np.asarray(image, dtype=np.int64)
        top = int(pixels.max()) if pixels.size else 0
        if pixels.min(initial=0) < 0 or top > 65535:
            raise ValueError(f"a 32-bit integer image (mode {image.mode}, values up to {top}): save it with 8 or 16 bits")
        shift = 8 if image.mode.startswith("I;16") or top > 255 else 0  # mode I holding 0..255 is 8-bit data
        return Image.fromarray((pixels >> shift).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        raise ValueError("a 32-bit float image (mode F): save it with 8 or 16 bits per channel")
    return image.convert("RGB")


@contextlib.contextmanager
def seeded(seed: Optional[int]):
    """Seed torch's (CPU), Python's and NumPy's global generators for one sample.

    torchvision's transforms draw from torch, timm's RandAugment and AugMix from ``random``
    and ``numpy.random``. In the main process (no loader workers) the states are put back
    afterwards, so that the process's own streams (dropout) stay untouched; a loader worker
    draws from them for its samples alone, each seeded first, so it skips the restore (NumPy's
    ``get_state``/``set_state`` copy 2.5 kB: 0.14 ms a sample). Only the CPU generator is seeded:
    the transforms run there, and ``torch.manual_seed`` also queues a seed for every lazy device
    (CUDA, XPU, MTIA), each with a formatted stack trace (0.2-0.6 ms a sample, more than a
    32 px decode and crop; issue 25).
    """
    if seed is None:
        yield
        return
    generator = torch.default_generator
    restore = torch.utils.data.get_worker_info() is None
    states = (generator.get_state(), random.getstate(), np.random.get_state()) if restore else None
    generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        if restore:
            generator.set_state(states[0])
            random.setstate(states[1])
            np.random.set_state(states[2])


class CheckedItems(torch.utils.data.Dataset):
    """Items ``(image, label, bad_index)`` of a source read one sample at a time: ``bad_index`` is -1,
    or the index of an unreadable sample this item replaces (the main process collects them).

    Indexed by ``(index, seed)`` pairs (:class:`EpochSampler`) or by a plain index. A source
    implements :meth:`read` and :meth:`name`, and sets ``transform`` and ``train``.
    """

    transform = None
    train = True

    def read(self, index: int) -> Tuple[Image.Image, int]:
        """The sample's RGB image and label; raises one of :data:`UNREADABLE` for a broken one."""
        raise NotImplementedError

    def name(self, index: int) -> str:
        """How warnings name a sample (its path)."""
        raise NotImplementedError

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        for offset in range(len(self)):
            try:
                image, label = self.read((index + offset) % len(self))
            except UNREADABLE:
                continue
            if self.transform is not None:
                with seeded(seed):
                    image = self.transform(image)
            if offset == 0:
                return image, label, -1
            return image, (label if self.train else IGNORE_LABEL), index
        raise MixtrainError(f"no readable sample in {self.name(index)} and the rest of its split: check the data")


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


def train_transform(image_size: int, scale: Sequence[float], auto_augment: Optional[str] = None,
                    mean: Sequence[float] = (0.485, 0.456, 0.406)) -> v2.Compose:
    steps = [v2.RandomResizedCrop(image_size, scale=tuple(scale), antialias=True), v2.RandomHorizontalFlip()]
    if auto_augment:
        steps.append(auto_augment_transform(auto_augment, image_size, mean))
    return v2.Compose([*steps, v2.PILToTensor()])


def auto_augment_transform(policy: str, image_size: int, mean: Sequence[float]):
    """timm's RandAugment / AugMix / AutoAugment on PIL images, with the hparams of timm's create_transform."""
    # timm imports its model registry (0.6 s over torchvision): only when a policy is asked for.
    from timm.data.auto_augment import (augment_and_mix_transform, auto_augment_transform as timm_auto_augment,
                                        rand_augment_transform)

    hparams = dict(translate_const=int(image_size * 0.45), img_mean=tuple(min(255, round(255 * m)) for m in mean))
    if policy.startswith("augmix"):
        hparams["translate_pct"] = 0.3
    make = (rand_augment_transform if policy.startswith("rand")
            else augment_and_mix_transform if policy.startswith("augmix") else timm_auto_augment)
    try:
        transform = make(policy, hparams)
    except (AssertionError, KeyError, ValueError, IndexError) as ex:
        raise MixtrainError(f"dataset.auto_augment={policy!r} is not a timm policy string ({ex or type(ex).__name__}): "
                            f"use e.g. rand-m9-mstd0.5-inc1, augmix-m5-w4-d2 or original") from None
    for op in [*getattr(transform, "ops", []), *(op for sub in getattr(transform, "policy", []) for op in sub)]:
        if op.name.startswith("Posterize"):
            op.aug_fn = posterize_at_least_one_bit
    return transform


def posterize_at_least_one_bit(image: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, with 0 bits read as 1: timm asks for 0 bits at the ends of the
    magnitude range (PosterizeIncreasing at magnitude 10, Posterize near 0, both reached with
    magnitude noise), which Pillow >= 11 refuses with a ValueError mid-epoch."""

    return image if bits_to_keep >= 8 else ImageOps.posterize(image, max(1, int(bits_to_keep)))


def eval_transform(image_size: int, crop_pct: float) -> v2.Compose:
    return v2.Compose([
        v2.Resize(int(round(image_size / crop_pct)), antialias=True),
        v2.CenterCrop(image_size),
        v2.PILToTensor(),
    ])


class EpochSampler(Sampler):
    """This rank's ``(index, seed)`` pairs for the current epoch, from position ``start`` on.

    Training: one shared random order per epoch (each rank takes a strided slice, as
    :class:`~mixtrain.data.device_loader.DeviceLoader` does) and a seed per position for
    the sample's augmentation. Evaluation: the samples in order, strided over ranks with
    no padding. Skipping to ``start`` decodes nothing.
    """

    def __init__(self, size: int, train: bool, seed: int, rank: int = 0, world_size: int = 1,
                 repeats: int = 1) -> None:
        self.size, self.train, self.seed = size, train, seed
        self.rank, self.world_size, self.repeats = rank, world_size, repeats if train else 1
        self.epoch, self.start = 0, 0

    def plan(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if not self.train:
            order = torch.arange(self.rank, self.size, self.world_size)
            return order, torch.zeros_like(order)
        g = epoch_generator(self.seed, self.epoch)
        order = repeated(torch.randperm(self.size, generator=g), self.repeats)
        seeds = torch.randint(0, 2**62, (len(order),), generator=g)  # per position: each copy its own
        take = epoch_positions(self.size, self.repeats, self.rank, self.world_size)
        return order[take], seeds[take]

    @property
    def samples(self) -> int:
        """Samples this rank sees in a whole epoch."""
        if self.train:
            return len(epoch_positions(self.size, self.repeats, self.rank, self.world_size))
        return len(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return self.samples - self.start

    def __iter__(self):
        order, seeds = self.plan()
        return zip(order[self.start:].tolist(), seeds[self.start:].tolist() if self.train else [None] * len(order))


def device_batch(loader, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int):
    """A streamed batch on ``loader``'s device, normalized (and erased, to train); to evaluate, without the
    stand-ins of unreadable files (left out of every metric): None when nothing is left."""
    if not loader.train:
        keep = labels != IGNORE_LABEL
        if not keep.all():
            if not keep.any():
                return None
            images, labels = images[keep], labels[keep]
    images = normalize(images.to(loader.device, non_blocking=True), loader.scale, loader.shift, loader.channels_last)
    if loader.erasing is not None:
        images = loader.erasing(images, epoch, step)
    return images, labels.to(loader.device, non_blocking=True)


class FolderLoader:
    """A DataLoader over :class:`CheckedItems` (an ImageFolder, ...) whose uint8 batches are normalized
    on the device."""

    def __init__(self, dataset: CheckedItems, train: bool, options, mean: Sequence[float],
                 std: Sequence[float], repeats: int = 1, erasing=None) -> None:
        self.dataset, self.train = dataset, train
        self.device, self.channels_last = options.device, options.channels_last
        self.batch_size, self.max_batches = options.batch_size, options.max_batches
        self.erasing = erasing if train else None
        self.sampler = EpochSampler(len(dataset), train, options.seed, options.rank, options.world_size, repeats)
        if train and self.sampler.samples < self.batch_size:
            raise MixtrainError(
                f"trainer.batch_size ({self.batch_size}) is larger than the training set per process "
                f"({self.sampler.samples} images): lower trainer.batch_size"
            )
        self.loader = DataLoader(
            dataset, batch_size=self.batch_size, sampler=self.sampler, num_workers=options.num_workers,
            pin_memory=self.device.type == "cuda", drop_last=train, persistent_workers=options.num_workers > 0,
            # Workers' base seeds come from here, not from the process's global stream.
            generator=torch.Generator().manual_seed(options.seed),
            # A worker outliving a killed run must not keep its run dir locked.
            worker_init_fn=forget_inherited_claims,
        )
        self.scale, self.shift = normalizer(mean, std, self.device)
        self.unreadable: Set[str] = set()  # files replaced so far (reported once by the run)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        samples = self.sampler.samples
        batches = samples // self.batch_size if self.train else -(-samples // self.batch_size)
        return batches if self.max_batches is None else min(batches, self.max_batches)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch

    def iter_from(self, start_step: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.start = start_step * self.batch_size
        batches = len(self)
        for step, (images, labels, bad) in enumerate(self.loader, start=start_step):
            if step >= batches:
                break
            if (bad >= 0).any():
                self.unreadable.update(self.dataset.name(int(i)) for i in bad[bad >= 0])
            batch = device_batch(self, images, labels, self.sampler.epoch, step)
            if batch is not None:
                yield batch

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)


def read_bytes(path: str) -> torch.Tensor:
    with open_regular(path) as f:
        data = f.read()
    if not data:
        raise OSError(f"an empty file: {path}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_folder(dataset: datasets.ImageFolder, image_size: int) -> Tuple[torch.Tensor, torch.Tensor, List[str], int]:
    """Every readable image of an ImageFolder as uint8 ``[N, 3, S, S]`` (resized if not S x S),
    its labels, the paths of the files that could not be read (left out), and the longest
    side of any image as stored (to tell when every image is being enlarged)."""
    resize = v2.Resize((image_size, image_size), antialias=True)
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


def stream_transform(cfg: StreamedConfig, train: bool):
    """The streaming path's transform: augmentation to train, resize + center crop otherwise."""
    if train:
        return train_transform(cfg.image_size, cfg.scale, cfg.auto_augment, cfg.mean)
    return eval_transform(cfg.size(train), cfg.crop_pct)


def stream_split(cfg: StreamedConfig, dataset: CheckedItems, train: bool, options: LoaderOptions,
                 skipped: Sequence[str] = (), changed: int = 0) -> Split:
    """A split of a source read sample by sample, in DataLoader workers."""
    loader = FolderLoader(dataset, train, options, cfg.mean, cfg.std, cfg.repeated_aug, erasing(cfg, options))
    return Split(loader, list(dataset.classes), list(skipped), changed)


def open_folder(cfg: FolderConfig, split: str, train: bool, options: LoaderOptions) -> Split:
    folder = cfg.split_name(split)
    key = {cfg.train_split: "dataset.train_split", cfg.val_split: "dataset.val_split"}.get(folder, "heldout")
    if not cfg.streams:
        dataset = open_image_folder(cfg.root, folder, key, train=train)
        images, labels, bad, stored = decode_folder(dataset, cfg.size(train))
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
