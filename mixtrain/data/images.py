"""Reading an image file: every image becomes 8-bit RGB, and a file that cannot be read raises one
of :data:`UNREADABLE` (the loaders count, name and leave it out)."""

from __future__ import annotations

import os
import stat
import warnings

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

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


def read_bytes(path: str) -> torch.Tensor:
    with open_regular(path) as f:
        data = f.read()
    if not data:
        raise OSError(f"an empty file: {path}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)
