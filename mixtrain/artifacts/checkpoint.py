"""Checkpoints: everything needed to continue a run exactly, written atomically, loaded safely.

A checkpoint is a plain dict of tensors and Python values (so ``torch.load(...,
weights_only=True)`` reads it and a file from someone else can never run code; the config it
holds is read as data too, :mod:`mixtrain.config.trust`):
model, optimizer, scheduler and AMP scaler states; where the run is (epoch, step and
the running sums of the epoch in progress); every RNG state (torch CPU and CUDA, the
mixer's generator state; the data order needs none, it is a function of seed and epoch);
the resolved config; and the metrics so far. A checksum of its tensors, checked on load,
turns a bit flipped on disk or in transfer into one line instead of silent NaN.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Collection, Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import MISSING

from mixtrain.config import GROUPS, TrainConfig, asdict as config_asdict, config_from_dict
from mixtrain.config.trust import code_values
from mixtrain.errors import MixtrainError
from mixtrain.files import write_atomic
from mixtrain.layout import LAST

FORMAT = "mixtrain-checkpoint-v1"


@dataclass
class EpochProgress:
    """Running sums of the epoch being trained (a mid-epoch checkpoint keeps them)."""

    loss_sum: float = 0.0
    correct: float = 0.0
    seen: int = 0


@dataclass
class TrainState:
    """Where a run is: the next batch to train is batch ``step`` of epoch ``epoch``."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    wall_time: float = 0.0  # seconds the run took in earlier processes, up to this checkpoint (resumes add up)
    progress: EpochProgress = field(default_factory=EpochProgress)


# Before parts kept their own state, the checkpoint's "state" held it: where each key went.
LEGACY_PART_STATE = {"checkpoints": ("best_score", "best_epoch", "kept"), "nan_policy": ("nan_skips",)}


# --------------------------------------------------------------------------- files


def tensor_checksum(state: Any) -> str:
    """sha256 of every tensor in ``state`` (its place in the tree, dtype, shape and bytes), in a fixed order:
    it tells a file damaged on disk or in a copy, not one changed on purpose (its digest would be too)."""
    digest = hashlib.sha256()

    def visit(node: Any, where: str) -> None:
        if isinstance(node, torch.Tensor):
            flat = node.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{where}|{flat.dtype}|{tuple(node.shape)}|".encode())
            digest.update(flat.view(torch.uint8).numpy().data if flat.numel() else b"")
        elif isinstance(node, dict):
            for key in sorted(node, key=str):
                visit(node[key], f"{where}/{key}")
        elif isinstance(node, (list, tuple)):
            for i, item in enumerate(node):
                visit(item, f"{where}/{i}")

    visit(state, "")
    return digest.hexdigest()


def save_atomic(state: Dict[str, Any], path: Path) -> None:
    """Write a checkpoint atomically: a crash leaves the old file or the new one, never a torn one."""
    saved = {"format": FORMAT, **state, CHECKSUM: tensor_checksum(state)}
    write_atomic(path, lambda f: torch.save(saved, f), binary=True)


CHECKSUM = "tensors_sha256"  # absent from checkpoints written before it: they load unchecked


def checkpoint_path(path: str | Path, names: Sequence[str] = (LAST,)) -> Path:
    """A checkpoint file, or the first of ``names`` that a run dir holds."""
    path = Path(os.path.expanduser(str(path)))
    if path.is_dir():
        for name in names:  # a folder (or a link to nothing) in a checkpoint's place is said, not passed over
            if os.path.lexists(path / name) and not (path / name).is_file():
                raise MixtrainError(f"{path / name} is not a file: move it away, or pass the checkpoint file to use")
        found = [path / name for name in names if (path / name).is_file()]
        if len(names) > 1 and not found:
            raise MixtrainError(f"{path} holds neither {' nor '.join(names)}: pass a checkpoint file or a run dir")
        path = found[0] if found else path / names[0]
    if not path.is_file():
        raise MixtrainError(f"no checkpoint at {path}: pass a .pt file or a run dir that holds {' or '.join(names)}")
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Load a mixtrain checkpoint without running any code from the file."""
    path = checkpoint_path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as ex:  # a file that is not a checkpoint can fail in many ways (pickle, zip, index ...)
        first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        raise MixtrainError(f"{path} is not a readable mixtrain checkpoint ({first[:160]})") from None
    found = state.get("format") if isinstance(state, dict) else None
    if isinstance(found, str) and found.startswith(FORMAT[:-1]) and found != FORMAT:
        raise MixtrainError(f"{path} has checkpoint format {found[len(FORMAT) - 2:]}, and this mixtrain reads "
                            f"{FORMAT[-2:]} only: it was written by another mixtrain version; install that one "
                            "(pip install -U mixtrain for a newer one)")
    if found != FORMAT:
        raise MixtrainError(f"{path} is not a mixtrain checkpoint (no '{FORMAT}' marker)")
    expected = state.pop(CHECKSUM, None)
    problem = damage(state)  # what is missing or of the wrong type says more than a checksum that differs
    if problem:
        raise MixtrainError(f"{path} is a damaged mixtrain checkpoint ({problem}): use another checkpoint of the run "
                            "(best.pt, last.pt), or train again")
    if expected is not None and tensor_checksum({k: v for k, v in state.items() if k != "format"}) != expected:
        raise MixtrainError(f"{path} is damaged: its tensors no longer match the checksum saved with them (a bit "
                            "changed on disk or in a copy): use another copy of it, or another checkpoint")
    return state


def resume_checkpoint(path: str | Path) -> Path:
    """The checkpoint ``train resume=PATH`` continues from: a run's newest state, its ``last.pt``.

    Any other checkpoint of the run (``best.pt``, a kept epoch) is an earlier state: continuing
    from it would replace what the run did after it. Starting anew from one is a new run."""
    ckpt = checkpoint_path(path)
    if ckpt.name != LAST:
        raise MixtrainError(f"resume={path}: resume continues a run from its newest state, its {LAST}, never from "
                            f"an earlier checkpoint (it would replace the epochs after it); pass resume="
                            f"{ckpt.parent}, or start a new run from this one with init_from={ckpt}")
    return ckpt


# The groups a run's config always holds (a schema's MISSING: the run must choose them).
REQUIRED_GROUPS = tuple(f.name for f in fields(TrainConfig) if f.name in GROUPS and f.default is MISSING)


def damage(state: Dict[str, Any]) -> Optional[str]:
    """What is wrong with a checkpoint's contents (a file that carries the marker but was cut, edited or
    written by something else), or None: the parts every command reads are there and of their types,
    so no command meets the damage later as a traceback (the config itself: :func:`saved_config`)."""
    config = state.get("config")
    if not isinstance(config, dict):
        return "no config"
    # Every group a run must choose is a mapping; one it may leave out (debug) is a mapping or null.
    for group in GROUPS:
        value = config.get(group)
        if not isinstance(value, dict) and not (value is None and group not in REQUIRED_GROUPS):
            return f"its config lacks the {group} group"
    count = state.get("num_classes")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return f"num_classes is {count!r}, not a count"
    classes = state.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) != count
                                or not all(isinstance(c, str) for c in classes)):
        return f"classes is not a list of {count} names"
    for name in ("model", *(["ema"] if "ema" in state else [])):
        weights = state.get(name)
        if not isinstance(weights, dict) or not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
            return f"{name} is {type(weights).__name__}, not a dict of tensors"
    where = state.get("state")
    if not isinstance(where, dict) or not all(isinstance(where.get(k), int) for k in ("epoch", "step")):
        return "state (the epoch and step it was written at) is missing"
    if not isinstance(state.get("history", []), list):
        return "history is not a list of epoch records"
    return None


def saved_config(state: Dict[str, Any], path: Path, given: Collection[str] = (), commands: bool = True,
                 fix: Optional[Callable[[Sequence[str]], str]] = None):
    """The checkpoint's config as a validated TrainConfig, read as data (the arguments of
    :func:`~mixtrain.config.config_from_dict`); one line naming the file if it does not validate."""
    try:
        return config_from_dict(state["config"], path, given, commands, fix)
    except MixtrainError:
        raise
    except Exception as ex:  # OmegaConf's validation errors, a group that is not a mapping, a key missing
        first = (str(ex).strip().splitlines() or [repr(ex)])[0][:160]
        raise MixtrainError(f"{path} is a damaged mixtrain checkpoint (its config does not validate: {first}): use "
                            "another checkpoint of the run (best.pt, last.pt), or train again") from None


# --------------------------------------------------------------------------- run state


def rank_state(mixer: Any, state: TrainState) -> Dict[str, Any]:
    """What differs between ranks and must be restored per rank: RNG streams, the epoch's sums."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "mixer": mixer.state_dict(),
        "progress": asdict(state.progress),
    }


def snapshot(objects: Dict[str, Any], config: Dict[str, Any], classes: List[str], state: TrainState,
             history: List[dict], ranks: List[Dict[str, Any]], parts: Dict[str, Dict[str, Any]],
             train_samples: int = 0, order: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The checkpoint dict: the state of every object in ``objects`` (model, optimizer, scheduler,
    scaler, EMA, ...) under its name; ``ranks`` holds :func:`rank_state` of every rank, in rank order;
    ``parts`` each training part's own state by its name."""
    return {
        **{name: obj.state_dict() for name, obj in objects.items()},
        "state": asdict(state),
        "parts": parts,
        "ranks": ranks,
        "config": config,
        "num_classes": len(classes),
        "classes": list(classes),  # names, for predict and export
        "train_samples": train_samples,  # the training set's size: resume refuses another source
        "order": order,  # what the training loader's order depends on beyond the config (shards: the workers)
        "history": history,
    }


def restore(saved: Dict[str, Any], objects: Dict[str, Any], mixer: Any, rank: int = 0,
            world_size: int = 1) -> Tuple[TrainState, List[dict]]:
    """Load every state from ``saved`` into the live objects; return the run state and history."""
    try:
        objects["model"].load_state_dict(saved["model"])
    except RuntimeError as ex:
        lines = [line.strip() for line in str(ex).strip().splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise MixtrainError(f"the checkpoint's weights do not fit this model ({detail[:160]}): "
                            "resume with the model it was trained with") from None
    if len(saved["ranks"]) != world_size:
        raise MixtrainError(f"the checkpoint was written by {len(saved['ranks'])} process(es) and this run has "
                            f"{world_size}: resume with the same number (torchrun --nproc_per_node) to continue exactly")
    for name, obj in objects.items():
        if name != "model":
            obj.load_state_dict(saved[name])
    mine = saved["ranks"][rank]
    torch.set_rng_state(mine["torch"])
    if mine["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(mine["cuda"])
    mixer.load_state_dict(mine["mixer"])
    known = {f.name for f in fields(TrainState)}
    state = {k: v for k, v in saved["state"].items() if k in known}
    return TrainState(**{**state, "progress": EpochProgress(**mine["progress"])}), list(saved["history"])


def part_states(saved: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Each part's saved state by its name (from a checkpoint written before parts had their own, the
    keys they took over; ``nan_skips`` became the NaN policy's ``skips``)."""
    if "parts" in saved:
        return saved["parts"]
    old = saved["state"]
    states = {part: {k: old[k] for k in keys if k in old} for part, keys in LEGACY_PART_STATE.items()}
    if "nan_skips" in states["nan_policy"]:
        states["nan_policy"] = {"skips": states["nan_policy"]["nan_skips"]}
    return states


# Keys that may differ on resume: where and how fast the run goes, what it logs and keeps,
# where the data now lives. Any other change would alter what the run means (its data,
# model, batches, mixing, optimizer, schedule or seed) and is refused.
RESUME_MAY_CHANGE = {
    "resume", "objective", "trainer.epochs", "trainer.device", "trainer.num_workers", "trainer.compile",
    "trainer.eval_every", "trainer.eval_batch_size", "trainer.log_every", "trainer.checkpoint",
    "trainer.checkpoint_every_steps", "trainer.limit_val_batches", "trainer.on_nan", "trainer.nan_skip_limit",
    "dataset.root", "dataset.download", "dataset.on_bad_image",
    # where the shards or files of a dataset now are (the classes and the training set's size are checked)
    "dataset.train_urls", "dataset.val_urls", "dataset.info", "dataset.path", "dataset.data_files",
    # where the run's first weights were (the checkpoint holds the weights now: the file is not read again)
    "model.pretrained_path", "init_from",
    "dataset.read_timeout",
}


# Groups whose every key may differ: where the run logs to (logger=..., added or dropped on resume).
RESUME_MAY_CHANGE_GROUPS = ("logger.",)


def _flatten(config: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and key != "kwargs":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resumable(saved: Dict[str, Any], config: Dict[str, Any], path: Path) -> Optional[str]:
    """Refuse, naming the key, any change that alters the run's meaning (before any data is read); allow
    ``trainer.epochs`` to grow, and return the line that says what that does to the schedule (else None).
    What the data must match: :func:`check_resumable_data`."""
    # Through the schema, so that keys added since the checkpoint was written take their defaults. The
    # checkpoint may name code (an import path) only where this run's own config names the same.
    mine = dict(code_values(config))
    same = [key for key, value in code_values(saved["config"]) if mine.get(key) == value]
    stored = saved_config(saved, path, same, commands=False,
                          fix=lambda keys: f"{', '.join(keys)} with the values it names on this command line")
    old, new = _flatten(config_asdict(stored)), _flatten(config)
    # A changed group option (augment.name, ...) first: it explains the keys that come with it.
    for key in sorted(set(old) | set(new), key=lambda k: (not k.endswith(".name"), k)):
        may_change = key in RESUME_MAY_CHANGE or key.startswith(RESUME_MAY_CHANGE_GROUPS)
        if not may_change and old.get(key) != new.get(key):
            raise MixtrainError(
                f"cannot resume {path}: {key} is {new.get(key)!r} but the checkpoint has {old.get(key)!r} (the run dir's "
                ".hydra/overrides.yaml and this command line make the config): drop that override (or restore "
                "overrides.yaml), or start a new run"
            )
    before, after = old["trainer.epochs"], new["trainer.epochs"]
    if after < before:
        raise MixtrainError(f"cannot resume {path}: trainer.epochs is {after} but the run was set for {before}; "
                            "on resume trainer.epochs may only grow")
    if after == before:
        return None
    return (f"trainer.epochs {before} -> {after}: the {new['sched.name']} schedule now spans {after} epochs from the "
            "start, so the learning rate from here on follows the longer schedule (it jumps where the two differ)")


def check_resumable_data(saved: Dict[str, Any], classes: Sequence[str], path: Path, train_samples: int = 0,
                         order: Optional[Dict[str, Any]] = None) -> None:
    """The data a resumed run reads against its checkpoint's: the classes, the training set's size, and what
    the training order depends on beyond the config (shards: the loader workers)."""
    check_classes(saved, classes, f"cannot resume {path}", "resume on the same dataset, or start a new run")
    if saved.get("train_samples") and train_samples and saved["train_samples"] != train_samples:
        raise MixtrainError(f"cannot resume {path}: the training data has {train_samples} samples but the checkpoint's "
                            f"had {saved['train_samples']}; resume on the same data, or start a new run")
    if saved.get("order") and order and saved["order"] != order:
        changed = ", ".join(f"{k} {saved['order'].get(k)} -> {v}" for k, v in order.items() if saved["order"].get(k) != v)
        raise MixtrainError(f"cannot resume {path}: the training order depends on {changed}; resume with the run's "
                            f"value (trainer.num_workers={saved['order'].get('num_workers')}) to continue exactly")


def check_classes(saved: Dict[str, Any], classes: Sequence[str], refusal: str, fix: str) -> None:
    """The data's classes against the checkpoint's, by count and by name in order: label ``i`` must
    mean the same class (a folder whose classes were renamed keeps the count, not the meaning).
    One check for every command that pairs data with a checkpoint (resume, eval, compare)."""
    if saved["num_classes"] != len(classes):
        raise MixtrainError(f"{refusal}: the data has {len(classes)} classes but the checkpoint has "
                            f"{saved['num_classes']}; {fix}")
    named = saved.get("classes")  # absent from checkpoints written before they held names
    if named and list(named) != list(classes):
        changed = [f"{a!r} -> {b!r}" for a, b in zip(named, classes) if a != b]
        raise MixtrainError(f"{refusal}: the data's classes differ from the checkpoint's ({len(changed)} of "
                            f"{len(classes)}: {', '.join(changed[:3])}); {fix}")
