"""What machine a run ran on, beyond the device type: the CPU model and the features that decide
its speed (AVX2, AVX-512, bf16 and AMX matrix units), and the GPU's name. Rows and benchmarks
record them, so a comparison can show that both sides ran on the same kind of machine."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

# The CPU flags that change how fast (and in which precision) torch runs here.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_model() -> str:
    """e.g. "Intel(R) Xeon(R) Platinum 8480C"."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_features() -> str:
    """The speed flags this CPU has, and the kernels torch picked for it, e.g.
    "avx2 avx512f avx512_bf16 amx_bf16 amx_tile; torch AVX512"."""
    flags = set(_cpuinfo().get("flags", "").split())
    present = " ".join(f for f in SPEED_FLAGS if f in flags)
    return f"{present}; torch {torch.backends.cpu.get_cpu_capability()}".strip()


def gpu_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device, "" otherwise."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else ""
