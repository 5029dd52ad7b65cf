"""``init_from=RUN``: a new run whose model starts from another run's weights.

The source (a run dir: its ``best.pt``, else ``last.pt``; or a checkpoint file) is only read: loaded
as data (:func:`mixtrain.artifacts.checkpoint.load`) and hashed, never opened for writing. The new
run records where its weights came from (path, sha256, raw or EMA) in its ``summary.json``.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from torch import nn

from mixtrain import layout
from mixtrain.artifacts import checkpoint
from mixtrain.artifacts.calibration import sha256_of
from mixtrain.errors import MixtrainError
from mixtrain.models.weights import classifier_prefixes, head_keys


def init_weights(model: nn.Module, model_name: str, source: str, ema: bool) -> Tuple[Dict[str, Any], str]:
    """Load the source checkpoint's model (or EMA) weights into ``model``, a new classifier where the
    classes differ; return the record for ``summary.json`` and the line the run says."""
    path = checkpoint.checkpoint_path(source, (layout.BEST, layout.LAST)).resolve()
    saved = checkpoint.load(path)
    saved_name = (saved.get("config") or {}).get("model", {}).get("name") if isinstance(saved.get("config"), dict) else None
    if saved_name != model_name:
        raise MixtrainError(f"init_from={source} holds a {saved_name} and this run builds a {model_name}: set the "
                            f"model it was trained with (model.name={saved_name})")
    key = "ema" if ema else "model"
    if key not in saved:
        raise MixtrainError(f"{path} holds no EMA weights (trained without trainer.ema.enabled=true): drop init_from_ema")
    state = dict(saved[key])
    own = model.state_dict()
    head = head_keys(list(own), classifier_prefixes(getattr(model, "pretrained_cfg", None)))
    replaced = [k for k in head if k in state and state[k].shape != own[k].shape]
    for k in replaced:  # another class count: the classifier starts anew
        del state[k]
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as ex:
        raise MixtrainError(f"the weights of {path} do not fit this {model_name} "
                            f"({str(ex).strip().splitlines()[-1].strip()[:160]}): set the model.* keys it was "
                            "trained with") from None
    missing = [k for k in result.missing_keys if k not in replaced]
    if missing or result.unexpected_keys:
        raise MixtrainError(f"the weights of {path} do not fit this {model_name} ({len(missing)} missing, "
                            f"{len(result.unexpected_keys)} unexpected: {', '.join([*missing, *result.unexpected_keys][:3])}): "
                            "set the model.* keys it was trained with")
    record = {"path": str(path), "sha256": sha256_of(path), "weights": "ema" if ema else "raw",
              "classifier": "new" if replaced else "kept"}
    head_text = "a new classifier" if replaced else "its classifier"
    line = (f"init_from {path}: the {record['weights']} weights of {model_name} with {head_text}; optimizer, schedule "
            "and epochs start anew")
    return record, line
