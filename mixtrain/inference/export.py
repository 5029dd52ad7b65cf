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

import io
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict

import torch
from safetensors.torch import save

from mixtrain.artifacts.model import LoadedModel, load_model
from mixtrain.errors import MixtrainError
from mixtrain.files import write_atomic, write_json_atomic

TOLERANCE = 1e-4
FILES = {"safetensors": "model.safetensors", "onnx": "model.onnx", "torchscript": "model.pt"}


def pretrained_cfg(loaded: LoadedModel) -> Dict[str, Any]:
    """timm's pretrained_cfg of the exported model: the preprocessing its run evaluated with (a streamed
    dataset's resolved keys; data held on the device was resized to its size, not cropped)."""
    dataset = loaded.config.dataset
    return {"architecture": loaded.config.model.name, "num_classes": len(loaded.classes),
            "label_names": loaded.classes, "input_size": [3, loaded.image_size, loaded.image_size],
            "crop_pct": dataset.crop_pct if dataset.streams else 1.0,
            "crop_mode": dataset.crop_mode if dataset.streams else "squash",
            "interpolation": getattr(dataset, "interpolation", None) or "bilinear",
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
    loaded = load_model(cfg.checkpoint, "cpu", cfg.weights, cfg.trust)
    out = Path(cfg.out).expanduser() if cfg.out else loaded.checkpoint.parent / f"export-{cfg.format}"
    target = out / FILES[cfg.format]
    if out.exists() and not out.is_dir():
        raise MixtrainError(f"out={out} is a file: out names a directory to write {FILES[cfg.format]} and "
                            "config.json into")
    if (target.exists() or (out / "config.json").exists()) and not cfg.overwrite:
        raise MixtrainError(f"{out} already holds an export: pick another out=, or pass overwrite=true")
    model, x = loaded.model.eval().to(memory_format=torch.contiguous_format), sample_batch(loaded)
    with torch.inference_mode():
        reference = model(x)
    result: Dict[str, Any] = {"format": cfg.format, "file": str(target), "temperature": loaded.temperature}
    # Built and checked in memory, then written whole (the one atomic writer): a killed export
    # leaves no file that a loader cannot read and a rerun would refuse.
    if cfg.format == "safetensors":

        data = save({k: v.contiguous() for k, v in model.state_dict().items()})
    elif cfg.format == "torchscript":
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript; it still loads anywhere
            torch.jit.save(torch.jit.trace(model, x), buffer)
            data = buffer.getvalue()
            with torch.inference_mode():
                result["max_abs_diff"] = check("torchscript", torch.jit.load(io.BytesIO(data))(x), reference, say)
    else:
        data = onnx_bytes(model, x, cfg.opset)
        try:
            import onnxruntime  # an optional extra: mixtrain[export]
        except ImportError:
            say("onnxruntime is not installed: the ONNX file was not checked (pip install \"mixtrain[export]\")")
        else:
            session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
            bigger = torch.cat([x, x.flip(-1), x])  # another batch size: the batch axis is dynamic
            with torch.inference_mode():
                want = model(bigger)
            got = torch.from_numpy(session.run(None, {"images": bigger.numpy()})[0])
            result["max_abs_diff"] = check("onnx", got, want, say)
    config = {"architecture": loaded.config.model.name, "num_classes": len(loaded.classes),
              "label_names": loaded.classes, "pretrained_cfg": pretrained_cfg(loaded),
              "temperature": loaded.temperature, "weights": cfg.weights, "format": cfg.format,
              "file": FILES[cfg.format], "checkpoint": str(loaded.checkpoint)}
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as ex:
        raise MixtrainError(f"cannot make out={out} ({ex.strerror}): pick another out=") from None
    try:
        write_atomic(target, lambda f: f.write(data), binary=True)
        write_json_atomic(out / "config.json", config)
    except BaseException:  # a full disk, a size limit: no half an export (the model without its config)
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise
    say(f"wrote {target} and {out / 'config.json'} (temperature {loaded.temperature:.4f})")
    return result


def onnx_bytes(model, x: torch.Tensor, opset) -> bytes:
    """The model as ONNX (dynamic batch axis), or one line naming the opset the exporter refused."""
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated, not gone
            torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["images"], output_names=["logits"],
                              opset_version=opset, dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    except Exception as ex:  # the exporter raises ValueError, RuntimeError, its own errors ...
        first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        fix = "drop opset= (the exporter's default) or pick one it supports" if opset is not None else \
            "export format=safetensors or torchscript instead"
        raise MixtrainError(f"the ONNX exporter refused this model{f' at opset {opset}' if opset else ''} "
                            f"({first[:200]}): {fix}") from None
    return buffer.getvalue()
