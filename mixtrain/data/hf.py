"""Hugging Face datasets (``dataset=hf``) read from disk: a ``DatasetDict`` saved by ``save_to_disk``
(``dataset.path``), or parquet / arrow files (``dataset.train_files`` / ``dataset.val_files``, globs as
``load_dataset``'s ``data_files``; strings, like webdataset's ``train_urls``, so one plain override sets each).

Images come from ``dataset.image_column`` (the ``Image`` feature: decoded on read, or raw bytes or
a path), labels from ``dataset.label_column``, the class names from its ``ClassLabel`` feature.
The samples stream as a folder's do, through the same code: transforms, per-sample seeds (so
exact resume), workers, unreadable images counted, named and left out; a label outside the classes
(-1, Hugging Face's "no label") makes its sample unreadable too.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from PIL import Image

from mixtrain.config.dataset import StreamedConfig
from mixtrain.config.errors import require
from mixtrain.data.images import load_rgb, to_rgb
from mixtrain.data.streaming import CheckedItems, stream_split
from mixtrain.data.transforms import stream_transform
from mixtrain.data.source import LoaderOptions, Split, register_source
from mixtrain.errors import MixtrainError


@dataclass
class HFConfig(StreamedConfig):
    """A Hugging Face dataset from disk (save_to_disk, or parquet/arrow files): its image and label columns."""

    name: str = "hf"
    path: Optional[str] = None  # a DatasetDict saved with save_to_disk
    train_files: Optional[str] = None  # or parquet / arrow files, a glob: data/train-*.parquet
    val_files: Optional[str] = None  # the validation files, as train_files
    train_split: str = "train"  # the training split's name
    val_split: str = "validation"  # the validation split's name
    image_column: str = "image"  # the column of images (an Image feature, bytes or paths)
    label_column: str = "label"  # the column of class indices (a ClassLabel feature)

    def __post_init__(self) -> None:
        super().__post_init__()
        require((self.path is None) != (self.train_files is None), "dataset.path", "or dataset.train_files: give one "
                "(a save_to_disk folder, or parquet / arrow files)", self.path)
        require(self.train_files is None or self.val_files is not None, "dataset.val_files", "is required with "
                "dataset.train_files", self.val_files)
        require(self.label_noise == 0, "dataset.label_noise", "is not supported with dataset=hf", self.label_noise)

    def split_name(self, split: str) -> str:
        return {"train": self.train_split, "val": self.val_split}.get(split, split)

    def data_files(self) -> Dict[str, str]:
        return {self.train_split: self.train_files, self.val_split: self.val_files}


def hf_datasets():
    try:
        import datasets  # the optional extra mixtrain[hf]
    except ImportError:
        raise MixtrainError("dataset=hf needs the datasets package: pip install \"mixtrain[hf]\"") from None
    return datasets


def load_split(cfg: HFConfig, split: str):
    datasets = hf_datasets()
    name = cfg.split_name(split)
    try:
        if cfg.path is not None:
            loaded = datasets.load_from_disk(cfg.path)
        else:
            files = cfg.data_files()
            kind = "arrow" if all(f.endswith(".arrow") for f in files.values()) else "parquet"
            loaded = datasets.load_dataset(kind, data_files=files)
    except Exception as ex:  # a missing folder, not a dataset, unreadable files: datasets raises many types
        where = cfg.path if cfg.path is not None else f"{cfg.train_files}, {cfg.val_files}"
        raise MixtrainError(f"cannot load the dataset {where} ({str(ex).splitlines()[0][:160]}): check dataset.path "
                            "or dataset.train_files / dataset.val_files") from None
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if name not in loaded:
        key = {cfg.train_split: "dataset.train_split", cfg.val_split: "dataset.val_split"}.get(name, "heldout")
        raise MixtrainError(f"the dataset has no split {name!r} (it has: {', '.join(loaded)}): set {key}")
    return loaded[name]


def as_rgb(value: Any) -> Image.Image:
    """What an ``Image`` column holds: a decoded PIL image, ``{"bytes": ..., "path": ...}``, or a path."""
    if isinstance(value, Image.Image):
        return to_rgb(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            image = Image.open(io.BytesIO(value["bytes"]))
            image.load()
            return to_rgb(image)
        value = value.get("path")
    if isinstance(value, str):
        return load_rgb(value)
    raise ValueError(f"not an image: {type(value).__name__}")


class HFItems(CheckedItems):
    def __init__(self, dataset, cfg: HFConfig, transform, train: bool) -> None:
        columns = dataset.column_names
        for column, key in ((cfg.image_column, "image_column"), (cfg.label_column, "label_column")):
            if column not in columns:
                raise MixtrainError(f"the dataset has no column {column!r} (it has: {', '.join(columns)}): set "
                                    f"dataset.{key}")
        feature = dataset.features[cfg.label_column]
        if not hasattr(feature, "names"):
            raise MixtrainError(f"the column {cfg.label_column!r} is not a ClassLabel: cast it "
                                "(dataset.cast_column(..., ClassLabel(names=[...]))) to name the classes")
        # Decoding happens here, where a broken image is caught (the Image feature would raise in datasets).
        image_feature = dataset.features[cfg.image_column]
        if hasattr(image_feature, "decode"):
            dataset = dataset.cast_column(cfg.image_column, type(image_feature)(decode=False))
        self.dataset, self.transform, self.train = dataset, transform, train
        self.image_column, self.label_column = cfg.image_column, cfg.label_column
        self.classes = list(feature.names)

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, index: int) -> Tuple[Image.Image, int]:
        row = self.dataset[int(index)]
        label = int(row[self.label_column])
        if not 0 <= label < len(self.classes):  # -1: Hugging Face's "no label" (a test split's)
            raise ValueError(f"label {label} of {len(self.classes)} classes")
        return as_rgb(row[self.image_column]), label

    def name(self, index: int) -> str:
        return f"{self.dataset.split or 'dataset'}[{index}]"

    def labels(self) -> torch.Tensor:
        return torch.tensor(self.dataset[self.label_column], dtype=torch.long)  # a column read: no image decoded


def open_hf(cfg: HFConfig, split: str, train: bool, options: LoaderOptions) -> Split:
    items = HFItems(load_split(cfg, split), cfg, stream_transform(cfg, train), train)
    return stream_split(cfg, items, train, options)


register_source("hf", HFConfig, open_hf)
