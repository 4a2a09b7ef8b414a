"""The machine a benchmark ran on, in one line: every script in benchmarks/ prints it with its table.

CPU model and the ISA flags that decide which kernels oneDNN, MKL and onnxruntime run (from
/proc/cpuinfo, via digitlab.hardware), the cores this process may use, the torch version and the CPU
capability its own kernels dispatch to (when torch is loaded: a benchmark that never uses torch does
not pay 2 s to import it), the GPU if any, and the versions of other libraries a benchmark names.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

from digitlab.hardware import ISA_FLAGS, cpu_info


def cores() -> int:
    """The cores this process may run on (its affinity), else all of them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_name() -> str:
    """The CPU model and the usable cores, for a table's machine column."""
    return f"{cpu_info().model or platform.processor() or 'unknown CPU'}, {cores()} cores"


def machine_line(*libraries: str, load_torch: bool = False) -> str:
    """e.g. `machine: Intel(R) Xeon(R) Processor @ 2.80GHz, 2 cores; ISA: avx2 fma avx512f avx512_vnni;
    load average 0.3; torch 2.13.0+cpu (CPU capability AVX512)`; `libraries` (distribution names) add
    their versions.
    With load_torch, torch is imported to report its CPU capability even if the benchmark has not."""
    info = cpu_info()
    isa = " ".join(flag for flag in ISA_FLAGS if flag in info.flags) or "unknown"
    parts = [f"machine: {cpu_name()}", f"ISA: {isa}"]
    if hasattr(os, "getloadavg"):  # other work on the machine while measuring: say so
        parts.append(f"load average {os.getloadavg()[0]:.1f}")
    if load_torch or "torch" in sys.modules:
        import torch  # here: only where the benchmark uses torch, or asks

        gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
        parts.append(f"torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}){gpu}")
    for name in libraries:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} not installed")
    return "; ".join(parts)


if __name__ == "__main__":
    print(machine_line(load_torch=True))
