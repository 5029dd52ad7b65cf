"""A checkpoint as a model: the file a run dir names, the model it holds, and that model ready to
use (its preprocessing, classes and stored temperature) for eval, compare, predict, export and
scripts (``mixtrain.load_model``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
from torch import nn
from torchvision.datasets.folder import find_classes

from mixtrain import layout
from mixtrain.artifacts import checkpoint
from mixtrain.artifacts.calibration import read_calibration
from mixtrain.config import TrainConfig
from mixtrain.data import FolderConfig, eval_image_transform
from mixtrain.data.device_loader import normalize, normalizer
from mixtrain.data.mini import MiniConfig, mini_classes
from mixtrain.errors import MixtrainError
from mixtrain.models import create_model


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run dir's ``best.pt`` (else its ``last.pt``)."""
    return checkpoint.checkpoint_path(path, (layout.BEST, layout.LAST))


def build_model(train_cfg: TrainConfig, state: Dict[str, Any], num_classes: int, path: Path,
                device: torch.device, weights: str = "raw") -> nn.Module:
    """The checkpoint's model in eval mode, with its trained (``raw``) or EMA (``ema``) weights."""
    model_cfg = train_cfg.model
    if weights == "ema" and "ema" not in state:
        raise MixtrainError(f"{path} holds no EMA weights (trained without trainer.ema.enabled=true): drop weights=ema")
    model = create_model(model_cfg, num_classes, load_weights=False)  # the checkpoint holds the weights
    try:
        model.load_state_dict(state["ema" if weights == "ema" else "model"])
    except RuntimeError as ex:
        first = str(ex).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise MixtrainError(f"{path} does not fit a {model_cfg.name} with {num_classes} classes ({detail[:160]}): "
                            "evaluate on a dataset with the classes it was trained on") from None
    model = model.to(device).eval()
    if train_cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


@dataclass
class LoadedModel:
    """A trained model ready to use: eval mode, its preprocessing, classes and temperature."""

    model: nn.Module
    transform: Any  # PIL image -> uint8 [3, H, W]
    mean: List[float]
    std: List[float]
    classes: List[str]
    temperature: float  # 1.0 when the model was not calibrated
    image_size: int
    config: Any  # the run's TrainConfig
    checkpoint: Path

    def preprocess(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` -> normalized float on the model's device."""
        device = next(self.model.parameters()).device
        scale, shift = normalizer(self.mean, self.std, device)
        return normalize(images_uint8.to(device), scale, shift, channels_last=False)

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor, calibrated: bool = True, tta: str = "none") -> torch.Tensor:
        """Softmax of ``logits / T`` for normalized images; ``tta=flip`` averages with the mirror image."""
        t = self.temperature if calibrated else 1.0
        probs = (self.model(images).float() / t).softmax(1)
        if tta == "flip":
            probs = (probs + (self.model(images.flip(-1)).float() / t).softmax(1)) / 2
        return probs


def saved_class_names(dataset, num_classes: int) -> List[str]:
    """Class names for a checkpoint written before checkpoints held them: from the data, else indices."""
    try:
        if isinstance(dataset, MiniConfig):
            return mini_classes()
        if isinstance(dataset, FolderConfig):

            return find_classes(str(Path(dataset.root).expanduser() / dataset.val_split))[0]
    except (OSError, FileNotFoundError):
        pass
    return [str(i) for i in range(num_classes)]


def load_model(path: str | Path, device: str | torch.device = "cpu", weights: str = "raw",
               trust: Sequence[str] = ()) -> LoadedModel:
    """A checkpoint (file or run dir) as a :class:`LoadedModel`, for scripts: ``mixtrain.load_model(path)``.

    ``trust``: keys of its stored config whose import path (``_target_``, a model or dataset of
    someone's own) may be imported; any other is refused (:mod:`mixtrain.config.trust`). Its data is
    never opened."""
    ckpt = resolve_checkpoint(path).resolve()
    state = checkpoint.load(ckpt)
    cfg = checkpoint.saved_config(state, ckpt, trust, commands=False)
    classes = state.get("classes") or saved_class_names(cfg.dataset, state["num_classes"])
    model = build_model(cfg, state, state["num_classes"], ckpt, torch.device(device), weights)
    calibration = read_calibration(ckpt)
    size = cfg.dataset.size(False) or 32
    return LoadedModel(model, eval_image_transform(cfg.dataset), list(cfg.dataset.mean), list(cfg.dataset.std),
                       list(classes), calibration["temperature"] if calibration else 1.0, size, cfg, ckpt)
