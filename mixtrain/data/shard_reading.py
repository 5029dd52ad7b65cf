"""Reading WebDataset shards: a URL's bytes (local, ``http(s)://`` with a stall timeout, ``pipe:``),
one line for a shard that cannot be read, and a shard's samples (plain ustar archives split here)."""

from __future__ import annotations

import io
import re
import tarfile
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional

from mixtrain.errors import MixtrainError


def wds():
    """The ``webdataset`` package, an optional extra."""
    try:
        import webdataset  # the optional extra mixtrain[wds]
    except ImportError:
        raise MixtrainError("dataset=webdataset needs the webdataset package: pip install \"mixtrain[wds]\"") from None
    return webdataset


def expand(urls: str) -> List[str]:
    """``a-{000..002}.tar`` -> three URLs (WebDataset's brace notation; ``::`` joins lists)."""
    return list(wds().shardlists.expand_urls(urls))


def open_url(url: str, timeout: float = 60.0):
    """A readable stream of a local path or any URL WebDataset opens (http://, pipe:, ...).

    http(s) is read here, with ``timeout`` seconds allowed between bytes: WebDataset's reader runs
    ``curl`` with no time limit on a transfer that stalls (and with 30 retries that append a
    retried transfer to the partial one)."""
    if urllib.parse.urlparse(url).scheme in ("http", "https"):
        return urllib.request.urlopen(url, timeout=timeout)
    return wds().gopen(url, "rb")


def shard_error(url: str, ex: Exception, timeout: float) -> MixtrainError:
    """One line for a shard that could not be read: stalled, damaged, or not there."""
    first = (str(ex).strip().splitlines() or [type(ex).__name__])[0][:160]
    if isinstance(ex, TimeoutError) or isinstance(getattr(ex, "reason", None), TimeoutError):
        return MixtrainError(f"the shard {url} sent nothing for {timeout:g} s (dataset.read_timeout): check the "
                             "server, or raise dataset.read_timeout")
    if isinstance(ex, (tarfile.TarError, ValueError, EOFError, UnicodeDecodeError)):
        return MixtrainError(f"the shard {url} is truncated or damaged ({first}): copy it again, or write the set "
                             "again (mixtrain shards)")
    return MixtrainError(f"cannot read the shard {url} ({first}): check the server or the file, and "
                         "dataset.train_urls / dataset.val_urls")


def beside(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name if "/" in url else name


def shard_members(url: str, timeout: float = 60.0) -> List[Dict[str, Any]]:
    """The samples of one shard, raw: ``{"__key__": ..., "jpg": bytes, "cls": bytes, ...}``, in order.

    The shard is read whole (its in-shard shuffle needs every sample). Plain ustar members (what
    ``mixtrain shards``, ``tar`` and WebDataset's ``TarWriter`` write) are split by their headers
    here; any other tar (pax or GNU long names, compression) goes through WebDataset's reader.
    Either way WebDataset groups the files into samples.
    """
    tariterators = wds().tariterators
    with open_url(url, timeout) as stream:
        data = stream.read()
    files = ustar_files(data)
    if files is None:
        files = list(tariterators.tar_file_iterator(io.BytesIO(data)))
    return list(tariterators.group_by_keys({**f, "__url__": url} for f in files))


META = re.compile(r"__[^/]*__($|/)")  # WebDataset's skip_meta: __x__ files and folders


def ustar_files(data: bytes) -> Optional[List[Dict[str, Any]]]:
    """The regular files of an uncompressed ustar archive as ``{"fname", "data"}``, as WebDataset's
    ``tar_file_iterator`` gives them; None for anything else. Python's ``tarfile`` spends 0.13 ms a
    member on header objects: at 32 px, more than decoding the image (bench/shards.py)."""
    files, offset, view = [], 0, memoryview(data)
    while offset + 512 <= len(data):
        header = data[offset:offset + 512]
        if header == bytes(512):  # the end-of-archive blocks
            return files
        if header[257:262] != b"ustar" or header[156:157] not in (b"0", b"\0", b"5"):
            return None
        checksum = header[148:156].split(b"\0", 1)[0].strip()
        if not checksum or int(checksum, 8) != sum(header[:148]) + 256 + sum(header[156:]):
            return None
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        name = header[:100].split(b"\0", 1)[0].decode()
        prefix = header[345:500].split(b"\0", 1)[0].decode()
        name = f"{prefix}/{name}" if prefix else name
        start, offset = offset + 512, offset + 512 + -(-size // 512) * 512
        if offset > len(data):
            return None  # truncated: let tarfile name the error
        meta = META.match(name) or ("/" not in name and name.startswith("__") and name.endswith("__"))
        if header[156:157] != b"5" and not meta:
            files.append({"fname": name, "data": bytes(view[start:start + size])})
    return files if offset == len(data) else None
