"""The machine a benchmark ran on, in one line: every script prints it with its table.

CPU model and the ISA flags that decide which kernels oneDNN and MKL run (from /proc/cpuinfo), the
cores, PyTorch's version and the CPU capability its own kernels dispatch to, and the GPU if any.
"""

from __future__ import annotations

import os
import platform

import torch

from digitlab.hardware import ISA_FLAGS, cpu_info


def machine_line() -> str:
    """e.g. `machine: Intel(R) Xeon(R) Processor @ 2.80GHz; ISA: avx2 fma avx512f avx512_vnni; 2 cores;
    torch 2.13.0+cpu (CPU capability AVX512)`."""
    info = cpu_info()
    isa = " ".join(flag for flag in ISA_FLAGS if flag in info.flags) or "unknown"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f"; GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"machine: {info.model or platform.processor() or 'unknown CPU'}; ISA: {isa}; {cores} cores; "
            f"torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}){gpu}")


def cpu_name() -> str:
    """The CPU model and core count, for a table's machine column."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_info().model or platform.processor() or 'unknown CPU'}, {cores} cores"


if __name__ == "__main__":
    print(machine_line())
