"""What the CPU offers, from /proc/cpuinfo (Linux), and the training precision that follows from it.

Torch-free, so that benchmarks and tests can read it cheaply. bf16 pays on a CPU only where it has
native bf16 dot products: AVX512-BF16 (`avx512_bf16`, Cooper Lake, Sapphire Rapids, Zen 4) or AMX
(`amx_bf16`). There oneDNN runs `avx512_core_bf16`/AMX kernels, 2-3x faster per training step than
float32 with channels-last (measured on an AVX512-BF16 Xeon). Elsewhere bf16 is emulated, slower than
float32 (on an Ice Lake Xeon with AVX512-VNNI only, `benchmarks/train_step.py` measured 93 vs 46 ms per
single-threaded step of 32, under load), so `auto` keeps float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# The flags that decide which kernels oneDNN and MKL can use: printed with every benchmark table.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name ("" if unknown) and its feature flags (empty if unknown)."""

    model: str
    flags: frozenset[str]


def cpu_info(text: str | None = None) -> CpuInfo:
    """Model name and flags of the first processor in /proc/cpuinfo (or in `text`, in that format).
    On systems without /proc/cpuinfo, an empty CpuInfo: nothing is assumed."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return CpuInfo("", frozenset())
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model, flags)


def native_bf16(info: CpuInfo) -> bool:
    """Whether the CPU computes bf16 dot products natively (AVX512-BF16 or AMX)."""
    return any(flag in info.flags for flag in NATIVE_BF16_FLAGS)


def choose_precision(requested: str, device_type: str, info: CpuInfo | None = None) -> tuple[str, str]:
    """The precision to train in, "fp32" or "bf16" (autocast), and why, for a requested "auto", "fp32"
    or "bf16" on device_type "cpu" or "cuda". `info` defaults to this machine's /proc/cpuinfo."""
    if requested == "fp32":
        return "fp32", "fp32 requested"
    if requested not in ("auto", "bf16"):
        raise ValueError(f"precision: expected auto, fp32 or bf16, got {requested!r}")
    if device_type == "cuda":
        return "bf16", f"{requested}: GPU"
    info = cpu_info() if info is None else info
    present = [flag for flag in NATIVE_BF16_FLAGS if flag in info.flags]
    if requested == "bf16":
        return "bf16", "bf16 requested" + ("" if present else "; this CPU has no native bf16, so it is emulated "
                                           "(slower than fp32)")
    if present:
        return "bf16", f"auto: the CPU has native bf16 ({', '.join(present)})"
    return "fp32", f"auto: the CPU has no native bf16 ({' or '.join(NATIVE_BF16_FLAGS)})"
