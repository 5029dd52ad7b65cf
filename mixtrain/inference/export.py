"""``mixtrain export``: a trained model in a format other tools load, checked against PyTorch.

- ``safetensors``: the weights and a ``config.json`` in timm's ``pretrained_cfg`` shape
  (architecture, classes, mean, std, input size, crop_pct, interpolation) plus the
  temperature; a ``model=timm`` run loads back with ``timm.create_model(name, pretrained=True,
  pretrained_cfg_overlay=dict(file=".../model.safetensors", num_classes=N), num_classes=N)``.
- ``onnx``: a dynamic batch axis; checked with onnxruntime when it is installed.
- ``torchscript``: ``torch.jit.trace``, loadable with plain ``torch.jit.load`` (no mixtrain).

ONNX and TorchScript outputs are compared with PyTorch's on a real batch; the largest
absolute difference is printed and must be below 1e-4.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict

import torch

from mixtrain.errors import MixtrainError
from mixtrain.inference.predict import LoadedModel, load_model

TOLERANCE = 1e-4
FILES = {"safetensors": "model.safetensors", "onnx": "model.onnx", "torchscript": "model.pt"}


def pretrained_cfg(loaded: LoadedModel) -> Dict[str, Any]:
    cfg = loaded.config
    return {"architecture": cfg.model.name, "num_classes": len(loaded.classes), "label_names": loaded.classes,
            "input_size": [3, loaded.image_size, loaded.image_size],
            "crop_pct": getattr(cfg.dataset, "crop_pct", 1.0), "interpolation": "bilinear",
            "mean": list(loaded.mean), "std": list(loaded.std)}


def sample_batch(loaded: LoadedModel, n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, loaded.image_size, loaded.image_size), dtype=torch.uint8, generator=g)
    return loaded.preprocess(images).contiguous()


def check(name: str, got: torch.Tensor, want: torch.Tensor, say) -> float:
    diff = float((got.detach().float() - want.detach().float()).abs().max())
    say(f"{name}: max abs difference to PyTorch {diff:.2e} (must be < {TOLERANCE:g})")
    if not diff < TOLERANCE:
        raise MixtrainError(f"the {name} export differs from PyTorch by {diff:.2e}: not written as valid")
    return diff


def export(cfg, say=print) -> Dict[str, Any]:
    """Write ``cfg.format`` into ``cfg.out`` (refusing a dir that holds an export unless overwrite=true)."""
    loaded = load_model(cfg.checkpoint, "cpu", cfg.weights)
    out = Path(cfg.out).expanduser() if cfg.out else loaded.checkpoint.parent / f"export-{cfg.format}"
    target = out / FILES[cfg.format]
    if (target.exists() or (out / "config.json").exists()) and not cfg.overwrite:
        raise MixtrainError(f"{out} already holds an export: pick another out=, or pass overwrite=true")
    out.mkdir(parents=True, exist_ok=True)
    model, x = loaded.model.eval().to(memory_format=torch.contiguous_format), sample_batch(loaded)
    with torch.inference_mode():
        reference = model(x)
    result: Dict[str, Any] = {"format": cfg.format, "file": str(target), "temperature": loaded.temperature}
    if cfg.format == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(target))
    elif cfg.format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript; it still loads anywhere
            traced = torch.jit.trace(model, x)
            traced.save(str(target))
            with torch.inference_mode():
                result["max_abs_diff"] = check("torchscript", torch.jit.load(str(target))(x), reference, say)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated, not gone
            torch.onnx.export(model, (x,), str(target), dynamo=False, input_names=["images"],
                              output_names=["logits"], opset_version=cfg.opset,
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        try:
            import onnxruntime
        except ImportError:
            say("onnxruntime is not installed: the ONNX file was not checked (pip install \"mixtrain[export]\")")
        else:
            session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
            bigger = torch.cat([x, x.flip(-1), x])  # another batch size: the batch axis is dynamic
            with torch.inference_mode():
                want = model(bigger)
            got = torch.from_numpy(session.run(None, {"images": bigger.numpy()})[0])
            result["max_abs_diff"] = check("onnx", got, want, say)
    config = {"architecture": loaded.config.model.name, "num_classes": len(loaded.classes),
              "label_names": loaded.classes, "pretrained_cfg": pretrained_cfg(loaded),
              "temperature": loaded.temperature, "weights": cfg.weights, "format": cfg.format,
              "file": FILES[cfg.format], "checkpoint": str(loaded.checkpoint)}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    say(f"wrote {target} and {out / 'config.json'} (temperature {loaded.temperature:.4f})")
    return result
