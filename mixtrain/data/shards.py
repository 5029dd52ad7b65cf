"""WebDataset shards (``dataset=webdataset``): tar files of samples, local or at any URL WebDataset
opens (``http://``, ``pipe:``), named in brace notation (``shards/train-{000000..000099}.tar``).

A sample is the tar members that share a key: ``__key__``, the image under ``jpg`` / ``jpeg`` /
``png`` / ``webp``, the class index under ``cls``. The class names and each shard's sample count
come from ``_info.json`` beside the shards (timm's: ``splits.<split>.filenames`` and
``shard_lengths``, plus ``classes``) or ``classes.json``; without counts, each shard is counted
once, and the run says so. ``mixtrain shards`` writes shards and ``_info.json`` from a folder.

Order, and exact resume. An epoch's shard order is a permutation drawn from (seed, epoch); rank
``r`` of ``W`` takes every ``W``-th shard of it, and loader worker ``w`` of ``K`` every ``K``-th of
the rank's; each shard's samples are shuffled by a permutation of their own drawn from (seed,
epoch, shard), and each sample's augmentation by a seed of its own. Every sample of a split is
read once an epoch (the ranks' training epochs are cut to the shortest rank's full batches, as a
DistributedSampler with drop_last). Workers batch their own samples, and the DataLoader takes
their batches in turn, so where each worker is at step ``s`` is known from the shard counts
alone: a resumed run skips whole shards unopened, and reads (without decoding) the samples of
the shard it stops inside, which it needs to shuffle. The order depends on the number of loader
workers: resume with the same ``trainer.num_workers``.
"""

from __future__ import annotations

import io
import itertools
import json
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from omegaconf import MISSING
from PIL import Image

from mixtrain.config.dataset import StreamedConfig
from mixtrain.config.errors import require
from mixtrain.data.device_loader import epoch_generator, normalizer
from mixtrain.data.images import UNREADABLE, to_rgb
from mixtrain.data.shard_reading import beside, expand, open_url, shard_error, shard_members
from mixtrain.data.streaming import IGNORE_LABEL, device_batch, seeded
from mixtrain.data.transforms import stream_transform
from mixtrain.data.source import LoaderOptions, Split, erasing, register_source
from mixtrain.errors import MixtrainError
from mixtrain.files import forget_inherited_claims

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
INFO_FILES = ("_info.json", "classes.json")


@dataclass
class WebDatasetConfig(StreamedConfig):
    """WebDataset tar shards, local or over http:// or pipe:, in brace notation; classes and counts from _info.json."""

    name: str = "webdataset"
    train_urls: str = MISSING  # shards/train-{000000..000099}.tar
    val_urls: str = MISSING  # the validation shards, as train_urls
    info: Optional[str] = None  # _info.json or classes.json; None: beside the first train shard
    # Seconds an http(s) shard server may send nothing before the read fails (a stalled transfer).
    read_timeout: float = 60.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.read_timeout > 0, "dataset.read_timeout", "must be > 0 seconds", self.read_timeout)
        require(self.label_noise == 0, "dataset.label_noise", "is not supported with dataset=webdataset (its labels "
                "are read sample by sample)", self.label_noise)


def read_info(cfg: WebDatasetConfig, first_shard: str) -> Dict[str, Any]:
    """``_info.json`` or ``classes.json`` as a dict with ``classes`` (and timm's ``splits``)."""
    candidates = [cfg.info] if cfg.info else [beside(first_shard, name) for name in INFO_FILES]
    for url in candidates:
        try:
            with open_url(url, cfg.read_timeout) as stream:
                info = json.loads(stream.read())
        except Exception:  # absent here: try the next name (gopen raises its own types for URLs)
            continue
        if isinstance(info, list):
            info = {"classes": info}
        info["classes"] = info.get("classes") or info.get("class_names") or info.get("label_names")
        if info["classes"]:
            return info
    raise MixtrainError(f"no class names for the shards: put _info.json or classes.json (a list of class names) "
                        f"beside {first_shard}, or pass dataset.info=URL (`mixtrain shards` writes both)")


@dataclass
class Shards:
    """One split's shards: their URLs, sample counts and the class names."""

    urls: List[str]
    counts: List[int]
    classes: List[str]
    counted: bool = False  # the counts came from reading the shards (no _info.json had them)
    read_timeout: float = 60.0  # seconds a remote shard may send nothing (dataset.read_timeout)


def open_shards(cfg: WebDatasetConfig, split: str) -> Shards:
    urls_text = {"train": cfg.train_urls, "val": cfg.val_urls}.get(split)
    if urls_text is None:
        raise MixtrainError(f"dataset=webdataset has the splits train and val (got {split!r}): use heldout=train, or "
                            "a fraction such as heldout=0.5")
    urls = expand(urls_text)
    if not urls:
        raise MixtrainError(f"dataset.{split}_urls={urls_text!r} names no shard")
    info = read_info(cfg, expand(cfg.train_urls)[0])
    known: Dict[str, int] = {}
    for part in (info.get("splits") or {}).values():
        known.update(zip(part.get("filenames", ()), part.get("shard_lengths", ())))
    counts, counted = [], False
    for url in urls:
        name = url.rsplit("/", 1)[-1]
        if name in known:
            counts.append(int(known[name]))
            continue
        try:
            counts.append(sum(1 for _ in shard_members(url, cfg.read_timeout)))
        except Exception as ex:  # a missing file, a refused connection, a broken tar
            raise shard_error(url, ex, cfg.read_timeout) from None
        counted = True
    return Shards(urls, counts, [str(c) for c in info["classes"]], counted, cfg.read_timeout)


# --------------------------------------------------------------------------- the epoch's order


def epoch_shards(count: int, train: bool, seed: int, epoch: int) -> np.ndarray:
    """The shards in this epoch's order: a permutation from (seed, epoch) to train, in order otherwise."""
    if not train:
        return np.arange(count)
    return torch.randperm(count, generator=epoch_generator(seed, epoch)).numpy()


def sample_order(count: int, train: bool, seed: int, epoch: int, shard: int) -> np.ndarray:
    """A shard's samples in this epoch's order: shuffled by (seed, epoch, shard) to train."""
    if not train:
        return np.arange(count)
    return np.random.default_rng([seed, epoch, shard, 23]).permutation(count)


def sample_seeds(count: int, seed: int, epoch: int, shard: int) -> List[int]:
    """The augmentation seeds of a shard's positions: a function of where a sample is, not of who reads it
    (one generator a shard: one a sample costs 80 us)."""
    return np.random.default_rng([seed, epoch, shard, 29]).integers(2**62, size=count).tolist()


def split_among(items: Sequence[int], part: int, parts: int) -> List[int]:
    return list(items[part::parts])


def batches_of(counts: Sequence[int], shards: Sequence[int], batch: int, train: bool) -> int:
    samples = sum(counts[s] for s in shards)
    return samples // batch if train else -(-samples // batch)


def delivered(per_worker: Sequence[int], steps: int) -> Tuple[List[int], int]:
    """How many batches each worker has given after ``steps`` batches, the DataLoader taking them in
    turn (worker 0, 1, ..., a worker that has run out skipped), and the worker whose turn is next."""
    done, turn = [0] * len(per_worker), 0
    while steps > 0 and any(d < t for d, t in zip(done, per_worker)):
        if done[turn] < per_worker[turn]:
            done[turn] += 1
            steps -= 1
        turn = (turn + 1) % len(per_worker)
    return done, turn


# --------------------------------------------------------------------------- the stream


class ShardStream(torch.utils.data.IterableDataset):
    """This rank's samples of one epoch, ``(uint8 image, label, bad)``: ``bad`` is the key of an unreadable
    sample this one replaced ("" for none). Set ``epoch``, ``skip`` (batches each worker has
    already given) and ``turn`` (the worker whose batch comes next) before iterating: the DataLoader
    starts its round at its worker 0, which plays worker ``turn``."""

    def __init__(self, shards: Shards, transform, train: bool, options: LoaderOptions) -> None:
        self.shards, self.transform, self.train = shards, transform, train
        self.seed, self.rank, self.world = options.seed, options.rank, options.world_size
        self.workers, self.batch_size = max(1, options.num_workers), options.batch_size
        self.epoch, self.skip, self.turn = 0, [0] * max(1, options.num_workers), 0
        self.full_batches = False  # each worker yields only what fills its full batches (training drops the rest)

    def rank_shards(self, rank: int) -> List[int]:
        order = epoch_shards(len(self.shards.urls), self.train, self.seed, self.epoch)
        return split_among(order, rank, self.world)

    def worker_shards(self, worker: int) -> List[int]:
        return split_among(self.rank_shards(self.rank), worker, self.workers)

    def per_worker_batches(self, rank: int) -> List[int]:
        shards = self.rank_shards(rank)
        return [batches_of(self.shards.counts, split_among(shards, w, self.workers), self.batch_size, self.train)
                for w in range(self.workers)]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = (info.id + self.turn) % self.workers if info is not None else 0
        skip = self.skip[worker] * self.batch_size
        samples = self.samples(self.worker_shards(worker), skip)
        if self.full_batches:  # the samples of a last, partial batch (dropped) are not even decoded
            samples = itertools.islice(samples, self.per_worker_batches(self.rank)[worker] * self.batch_size - skip)
        yield from samples

    def samples(self, shards: List[int], skip: int) -> Iterator[Tuple[torch.Tensor, int, str]]:
        for shard in shards:
            count = self.shards.counts[shard]
            if skip >= count:  # a whole shard the run has seen: not even opened
                skip -= count
                continue
            url = self.shards.urls[shard]
            try:
                members = shard_members(url, self.shards.read_timeout)
            except Exception as ex:  # a server gone or stalled, a truncated tar, a duplicated member
                raise shard_error(url, ex, self.shards.read_timeout) from None
            if len(members) != count:  # a shard cut short, or replaced: never hide it by rewriting the counts
                raise MixtrainError(f"the shard {url} holds {len(members)} samples but _info.json says {count}: it is "
                                    "truncated or damaged; copy it again, or write the set again (mixtrain shards)")
            order = sample_order(count, self.train, self.seed, self.epoch, shard)
            seeds = sample_seeds(count, self.seed, self.epoch, shard) if self.train else [None] * count
            for position in range(skip, count):
                yield self.decode(members, order, position, shard, seeds[position])
            skip = 0

    def decode(self, members: List[Dict[str, Any]], order: np.ndarray, position: int, shard: int,
               seed: Optional[int]):
        """The sample at ``position``; an unreadable one is replaced by the next readable one of the shard
        (for evaluation marked so that it is dropped from its batch), and named."""
        for offset in range(len(order)):
            sample = members[order[(position + offset) % len(order)]]
            try:
                image, label = read_sample(sample, len(self.shards.classes))
            except UNREADABLE:
                continue
            with seeded(seed):
                image = self.transform(image)
            if offset == 0:
                return image, label, ""
            bad = members[order[position]].get("__key__", "?")
            return image, (label if self.train else IGNORE_LABEL), f"{self.shards.urls[shard]}:{bad}"
        raise MixtrainError(f"no readable sample in {self.shards.urls[shard]}")


def read_sample(sample: Dict[str, Any], num_classes: int) -> Tuple[Image.Image, int]:
    """The RGB image and class index of a raw sample; one of :data:`UNREADABLE` for a broken one (a class
    index that names no class included)."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    key = key or next((k for k in sample if k not in ("__key__", "__url__", "cls", "json", "txt")
                       and isinstance(sample[k], bytes)), None)  # another format PIL reads (bmp, tif, ...)
    if key is None:
        raise ValueError(f"no image member ({', '.join(IMAGE_KEYS)}) in sample {sample.get('__key__')}")
    image = Image.open(io.BytesIO(sample[key]))
    image.load()
    label = sample.get("cls")
    if label is None:
        raise ValueError(f"no cls member in sample {sample.get('__key__')}")
    index = int(label.decode() if isinstance(label, bytes) else label)
    if not 0 <= index < num_classes:
        raise ValueError(f"class index {index} in sample {sample.get('__key__')}, of {num_classes} classes")
    return to_rgb(image), index


class ShardLoader:
    """The DataLoader over a :class:`ShardStream`, with normalization on the device (as FolderLoader's)."""

    def __init__(self, shards: Shards, transform, train: bool, options: LoaderOptions, mean, std, erase=None) -> None:
        self.shards, self.train, self.options = shards, train, options
        self.device, self.channels_last = options.device, options.channels_last
        self.batch_size, self.max_batches = options.batch_size, options.max_batches
        self.erasing = erase if train else None
        self.stream = ShardStream(shards, transform, train, options)
        self.stream.full_batches = train
        self.scale, self.shift = normalizer(mean, std, self.device)
        self.unreadable: Set[str] = set()
        if train and len(self) == 0:
            raise MixtrainError(f"trainer.batch_size ({self.batch_size}) is larger than the training samples of a "
                                f"loader worker ({min(self.stream.per_worker_batches(0))}): lower trainer.batch_size or "
                                "trainer.num_workers, or write more shards")

    @property
    def num_samples(self) -> int:
        return sum(self.shards.counts)

    def order(self) -> dict:
        """What the epoch's order depends on beyond the config: the loader workers (each reads its shards)."""
        return {"num_workers": self.options.num_workers}

    def __len__(self) -> int:
        if self.train:  # every rank takes as many steps as the shortest one has full batches
            batches = min(sum(self.stream.per_worker_batches(r)) for r in range(self.options.world_size))
        else:
            batches = sum(self.stream.per_worker_batches(self.options.rank))
        return batches if self.max_batches is None else min(batches, self.max_batches)

    def set_epoch(self, epoch: int) -> None:
        self.stream.epoch = epoch

    def iter_from(self, start_step: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        self.stream.skip, self.stream.turn = delivered(self.stream.per_worker_batches(self.options.rank), start_step)
        workers = self.options.num_workers
        loader = torch.utils.data.DataLoader(
            self.stream, batch_size=self.batch_size, num_workers=workers, drop_last=self.train,
            pin_memory=self.device.type == "cuda", worker_init_fn=forget_inherited_claims if workers else None)
        for step, (images, labels, bad) in enumerate(loader, start=start_step):
            if step >= len(self):
                break
            self.unreadable.update(b for b in bad if b)
            batch = device_batch(self, images, labels, self.stream.epoch, step)
            if batch is not None:
                yield batch

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)


def open_webdataset(cfg: WebDatasetConfig, split: str, train: bool, options: LoaderOptions) -> Split:
    shards = open_shards(cfg, split)
    loader = ShardLoader(shards, stream_transform(cfg, train), train, options, cfg.mean, cfg.std,
                         erasing(cfg, options))
    note = (f"counted the samples of {len(shards.urls)} {split} shard(s) once (no _info.json has their counts: "
            "`mixtrain shards` writes one)") if shards.counted else ""
    return Split(loader, shards.classes, note=note)


register_source("webdataset", WebDatasetConfig, open_webdataset)
