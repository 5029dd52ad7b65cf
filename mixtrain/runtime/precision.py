"""Device and numeric precision: CUDA AMP on a GPU, the same code on the CPU.

``torch.autocast(device_type, dtype)`` with fp16 (CUDA, with a GradScaler) or bf16
(CUDA or CPU, no scaler needed); full precision otherwise. ``trainer.amp=auto`` picks
AMP on CUDA, and on a CPU bf16 only where the CPU computes it natively (AVX512-BF16 or
AMX): elsewhere bf16 is emulated and about 20x slower than fp32.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch

from mixtrain.config import TrainerConfig
from mixtrain.errors import MixtrainError

# The CPU flags (Linux /proc/cpuinfo) under which oneDNN runs bf16 matmuls and convolutions natively.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MixtrainError(f"trainer.device={name} but CUDA is not available: use trainer.device=cpu or auto")
    return device


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), from its flags."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:  # not Linux: no reliable flag; assume emulation (the safe choice: fp32)
        return False
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


@dataclass
class Precision:
    """Autocast settings; a GradScaler only for fp16 on CUDA (bf16 needs none)."""

    device_type: str
    dtype: Optional[torch.dtype]  # None: full precision
    scaler: torch.amp.GradScaler
    warning: Optional[str] = None  # a choice the user made that will be slow here

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.float16: "fp16 autocast", torch.bfloat16: "bf16 autocast"}[self.dtype]


def resolve_precision(cfg: TrainerConfig, device: torch.device) -> Precision:
    cpu = device.type != "cuda"
    if cfg.amp == "auto":
        dtype = (torch.bfloat16 if cpu_has_native_bf16() else None) if cpu else \
            {"fp16": torch.float16, "bf16": torch.bfloat16}[cfg.amp_dtype]
    else:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[cfg.amp_dtype] if cfg.amp else None
    if dtype == torch.float16 and cpu:
        raise MixtrainError("trainer.amp_dtype=fp16 needs CUDA (it relies on a GradScaler): "
                            "use trainer.amp_dtype=bf16 on the CPU, or trainer.amp=false")
    warning = None
    if dtype == torch.bfloat16 and cpu and not cpu_has_native_bf16():
        warning = ("bf16 autocast on a CPU without native bf16 (no AVX512-BF16 or AMX): expect it to run about 20x "
                   "slower than fp32 (measured: 20 vs 400 img/s for ResNet-20); use trainer.amp=auto or false")
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return Precision(device.type, dtype, scaler, warning)
