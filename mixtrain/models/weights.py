"""A model's first weights from a file (``model.pretrained_path``), and a pretrained download that
fails fast when the hub cannot be reached.

The file is read as data (safetensors, or ``torch.load(weights_only=True)``: never a pickle that runs
code), through timm's ``load_state_dict`` (its ``state_dict`` / ``model`` / EMA entry, ``module.``
prefixes dropped). A timm model then loads it through timm's own ``load_pretrained`` (its checkpoint
filter, its classifier reset when the class count differs); a bundled or custom model by the same
rule, here. Either way one line says what was loaded, and a mismatch beyond the classifier is an
error unless ``model.strict=false``.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

import torch
from timm.models import load_state_dict
from torch import nn

from mixtrain.errors import MixtrainError

WEIGHT_FILES = (".safetensors", ".pth", ".pt", ".bin")


def read_weights(path: str) -> Dict[str, torch.Tensor]:
    """The state dict a weights file holds, read without running code; one line when it cannot be."""
    file = Path(os.path.expanduser(path))
    if not file.is_file():
        raise MixtrainError(f"model.pretrained_path={path} is not a file: pass a .safetensors, .pth or .bin file")
    try:
        with timm_load_log():  # its "Loaded ... from checkpoint" is said by the summary line
            state = load_state_dict(str(file), use_ema=True, weights_only=True)
    except Exception as ex:  # safetensors, zip, pickle and torch each raise their own
        first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        raise MixtrainError(f"model.pretrained_path={path} is not a readable weights file ({first[:160]}): pass "
                            f"a {', '.join(WEIGHT_FILES)} file of tensors") from None
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise MixtrainError(f"model.pretrained_path={path} holds no tensors: pass a file of model weights")
    return tensors


def classifier_prefixes(pretrained_cfg: Optional[Dict[str, Any]]) -> List[str]:
    """Where a model's classifier is, as its pretrained_cfg names it (timm's convention: ``fc``, ``head``)."""
    head = (pretrained_cfg or {}).get("classifier")
    return [head] if isinstance(head, str) else list(head or [])


def head_keys(keys: Sequence[str], prefixes: Sequence[str]) -> List[str]:
    return [k for k in keys if any(k.startswith(p + ".") for p in prefixes)]


def file_classes(state: Dict[str, torch.Tensor], prefixes: Sequence[str]) -> Optional[int]:
    """How many classes the file's classifier has (rows of its weight), if it has the model's classifier."""
    weights = [state[k] for k in head_keys(list(state), prefixes) if k.endswith("weight")]
    return int(weights[0].shape[0]) if weights else None


def summary(path: str, loaded: int, head: Tuple[Optional[int], int], missing: List[str], unexpected: List[str]) -> str:
    """One line: what came from the file, the classifier, and the keys that did not match."""
    before, classes = head
    head_text = (f"a new classifier for {classes} classes (the file's has {before})" if before not in (None, classes)
                 else "its classifier kept" if before == classes else "no classifier in the file")
    text = f"weights from {path}: {loaded} tensors, {head_text}"
    for name, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            text += f"; {name} {len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
    return text


def check_fit(path: str, model_name: str, missing: List[str], unexpected: List[str], strict: bool) -> None:
    if strict and (missing or unexpected):
        shown = ", ".join([*(f"missing {k}" for k in missing[:2]), *(f"unexpected {k}" for k in unexpected[:2])])
        raise MixtrainError(f"model.pretrained_path={path} does not fit {model_name} beyond its classifier "
                            f"({len(missing)} missing, {len(unexpected)} unexpected: {shown}): pick the model the "
                            "file was saved from, or pass model.strict=false to load what fits")


def size_mismatch(ex: RuntimeError, path: str, model_name: str) -> MixtrainError:
    found = re.search(r"size mismatch for ([^:]+): (.*)", str(ex))
    detail = f"{found.group(1)}: {found.group(2)[:120]}" if found else str(ex).strip().splitlines()[0][:160]
    return MixtrainError(f"model.pretrained_path={path} was saved from another architecture or size than "
                         f"{model_name} ({detail}): pick the model.name it was saved from")


def load_into(model: nn.Module, path: str, model_name: str, strict: bool) -> str:
    """Load a weights file into a bundled or custom model by timm's rule; return the summary line."""
    state = read_weights(path)
    own = model.state_dict()
    prefixes = classifier_prefixes(getattr(model, "pretrained_cfg", None))
    head = head_keys(list(own), prefixes)
    before = file_classes(state, prefixes)
    if any(k in state and state[k].shape != own[k].shape for k in head):  # another class count: a new head
        state = {k: v for k, v in state.items() if k not in head}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as ex:
        raise size_mismatch(ex, path, model_name) from None
    missing = [k for k in result.missing_keys if k not in head]
    check_fit(path, model_name, missing, list(result.unexpected_keys), strict)
    return summary(path, len(state) - len(result.unexpected_keys), (before, model_classes(model, head)),
                   missing, list(result.unexpected_keys))


def model_classes(model: nn.Module, head: Sequence[str]) -> int:
    weights = [model.state_dict()[k] for k in head if k.endswith("weight")]
    return int(weights[0].shape[0]) if weights else -1


class TimmLoadLog(logging.Handler):
    """The keys timm's ``load_pretrained`` reports it could not place (it logs them; it returns nothing)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.missing: List[str] = []
        self.unexpected: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for pattern, keys in ((r"^Missing keys \((.*)\) discovered", self.missing),
                              (r"^Unexpected keys \((.*)\) found", self.unexpected)):
            found = re.match(pattern, message)
            if found:
                keys.extend(k for k in found.group(1).split(", ") if k)


# timm's loggers that report a load (the file read, the keys placed): their lines are summed up in
# mixtrain's one line, so they do not also reach the terminal (a Hydra app logs INFO there).
TIMM_LOAD_LOGGERS = ("timm.models._builder", "timm.models._helpers")


@contextmanager
def timm_load_log():
    loggers = [logging.getLogger(name) for name in TIMM_LOAD_LOGGERS]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    handler = TimmLoadLog()
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield handler
    finally:
        for logger, (level, propagate) in zip(loggers, saved):
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


def create_timm_with_file(create, name: str, pretrained_cfg: Optional[Dict[str, Any]], path: str, num_classes: int,
                          strict: bool, kwargs: Dict[str, Any]) -> Tuple[nn.Module, str]:
    """``timm.create_model`` with the file's state dict as its pretrained weights (timm's own loading:
    its checkpoint filter, and a new classifier when the class count differs); the summary line."""
    state = read_weights(path)
    prefixes = classifier_prefixes(pretrained_cfg)
    before = file_classes(state, prefixes)
    # The file's own class count, so that timm keeps a classifier that fits and replaces one that does not.
    overlay = {"state_dict": state, "num_classes": before if before is not None else num_classes}
    with timm_load_log() as log:
        try:
            model = create(name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay,
                           pretrained_strict=False, **kwargs)
        except RuntimeError as ex:
            raise size_mismatch(ex, path, name) from None
    missing = [k for k in log.missing if k not in head_keys(log.missing, prefixes)]
    check_fit(path, name, missing, log.unexpected, strict)
    loaded = len(model.state_dict()) - len(log.missing)
    return model, summary(path, loaded, (before, num_classes), missing, log.unexpected)


# --------------------------------------------------------------------------- model.pretrained=true offline


def hub_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_pretrained_reachable(name: str, pretrained_cfg: Dict[str, Any]) -> None:
    """Before timm downloads a model's weights: they are in the local cache, or the hub answers within
    seconds; else one line naming model.pretrained_path (timm and huggingface_hub would retry for a minute)."""
    hub_id = pretrained_cfg.get("hf_hub_id")
    url = pretrained_cfg.get("url")
    if hub_id:
        from huggingface_hub import constants, try_to_load_from_cache  # timm's own hub client, a dependency of timm

        repo = hub_id.split("@")[0]
        if any(isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin")):
            return
        where, cache = constants.ENDPOINT, constants.HF_HUB_CACHE
    elif url:
        file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if file.is_file():
            return
        where, cache = url, str(file.parent)
    else:
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable(where):
        raise MixtrainError(f"model.pretrained=true needs {name}'s weights from {where}, which does not answer, and "
                            f"they are not in the cache ({cache}): pass model.pretrained_path=FILE (a .safetensors, "
                            ".pth or .bin file), or fill the cache on a machine online")
