"""The machine line every benchmark prints beside its figures: CPU model, ISA, cores, library versions."""

from __future__ import annotations

import os
import platform

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def cpu_model_and_flags() -> tuple[str, set[str]]:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown CPU", "", platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return model, flags


def machine_line() -> str:
    """One line: CPU model, ISA flags of interest, cores, and torch's CPU capability when torch is loaded."""
    import sys

    model, flags = cpu_model_and_flags()
    isa = " ".join(f for f in ISA_FLAGS if f in flags) or "no AVX2"
    extra = ""
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        extra = f", torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})"
    return f"machine: {model}, {os.cpu_count()} cores, ISA: {isa}{extra}"
