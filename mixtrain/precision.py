"""Device and numeric precision: CUDA AMP on a GPU, the same code on the CPU.

``torch.autocast(device_type, dtype)`` with fp16 (CUDA, with a GradScaler) or bf16
(CUDA or CPU, no scaler needed); full precision otherwise.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch

from mixtrain.config import TrainerConfig
from mixtrain.errors import MixtrainError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MixtrainError(f"trainer.device={name} but CUDA is not available: use trainer.device=cpu or auto")
    return device


@dataclass
class Precision:
    """Autocast settings; a GradScaler only for fp16 on CUDA (bf16 needs none)."""

    device_type: str
    dtype: Optional[torch.dtype]  # None: full precision
    scaler: torch.amp.GradScaler

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.float16: "fp16 autocast", torch.bfloat16: "bf16 autocast"}[self.dtype]


def resolve_precision(cfg: TrainerConfig, device: torch.device) -> Precision:
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[cfg.amp_dtype] if amp else None
    if dtype == torch.float16 and device.type != "cuda":
        raise MixtrainError("trainer.amp_dtype=fp16 needs CUDA (it relies on a GradScaler): "
                            "use trainer.amp_dtype=bf16 on the CPU, or trainer.amp=false")
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return Precision(device.type, dtype, scaler)
