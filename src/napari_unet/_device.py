"""Device choice and mixed precision."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from .data import InputError


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then the CPU; anything else is checked and used."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InputError(
            f"Unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps."
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was asked for but no CUDA GPU is available; use --device cpu.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("MPS was asked for but is not available; use --device cpu.")
    return device


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX, where bf16 matmuls beat fp32 several times."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _cuda_runs_bf16() -> bool:
    """bf16 in hardware (Ampere and later), not the emulation older GPUs report."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # PyTorch before the argument existed
        return torch.cuda.is_bf16_supported()


def autocast_dtype(device: torch.device, enabled: bool | None) -> torch.dtype | None:
    """The autocast dtype to use on ``device`` (None: full precision)."""
    if enabled is False:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if _cuda_runs_bf16() else torch.float16
    if device.type == "cpu" and (enabled or cpu_has_fast_bf16()):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def default_base_channels(device: torch.device) -> int:
    """Width of a new U-Net when none is given: 16 on the CPU, 32 on an accelerator.

    On a CPU a 16-channel network takes about a quarter of the time per step of a
    32-channel one, so a training budget of minutes gives it several times more
    steps, which matters more than width (see docs/accuracy.md).
    """
    return 16 if device.type == "cpu" else 32


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Let glibc reuse freed feature maps instead of returning them to the kernel.

    By default glibc serves blocks of more than a few MiB with ``mmap`` and unmaps
    them when freed, so every tile's forward pass faults in and zeroes its feature
    maps again; prediction ran 1.2-1.3x faster with this setting (docs/benchmarks.md,
    "Process settings"). This raises the mmap threshold and the trim
    threshold for the whole process, so it is called by the command line only, never
    by the library, and not at all where the user set ``MALLOC_*`` or
    ``GLIBC_TUNABLES`` in the environment. Returns whether the setting was applied.
    """
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return False
    if any(key.startswith("MALLOC_") or key == "GLIBC_TUNABLES" for key in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold))
        and mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(trim_threshold))
    )
