"""CPU facts from /proc/cpuinfo, and the training precision chosen from them."""

from __future__ import annotations

from digitlab.hardware import CpuInfo, choose_precision, cpu_info, native_bf16

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor @ 2.80GHz
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni {extra}

processor\t: 1
model name\t: Intel(R) Xeon(R) Processor @ 2.80GHz
flags\t\t: fpu sse2
"""


def test_cpu_info_reads_the_first_processor():
    info = cpu_info(CPUINFO.format(extra="avx512_bf16"))
    assert info.model == "Intel(R) Xeon(R) Processor @ 2.80GHz"
    assert {"avx2", "avx512_vnni", "avx512_bf16"} <= info.flags and native_bf16(info)
    assert not native_bf16(cpu_info(CPUINFO.format(extra="")))
    assert cpu_info("") == CpuInfo("", frozenset())


def test_auto_precision_follows_the_cpu():
    ice_lake = cpu_info(CPUINFO.format(extra="avx512_vbmi2"))  # VNNI, no bf16: this machine's kind
    cooper_lake = cpu_info(CPUINFO.format(extra="avx512_bf16"))
    sapphire_rapids = cpu_info(CPUINFO.format(extra="amx_tile amx_bf16 amx_int8"))
    assert choose_precision("auto", "cpu", ice_lake)[0] == "fp32"
    assert choose_precision("auto", "cpu", cooper_lake) == ("bf16", "auto: the CPU has native bf16 (avx512_bf16)")
    assert choose_precision("auto", "cpu", sapphire_rapids)[0] == "bf16"
    assert choose_precision("auto", "cpu", CpuInfo("", frozenset()))[0] == "fp32"  # unknown CPU: fp32
    assert choose_precision("auto", "cuda", ice_lake)[0] == "bf16"  # GPUs keep bf16 autocast


def test_explicit_precision_wins():
    cooper_lake = cpu_info(CPUINFO.format(extra="avx512_bf16"))
    assert choose_precision("fp32", "cpu", cooper_lake)[0] == "fp32"
    assert choose_precision("fp32", "cuda", cooper_lake)[0] == "fp32"
    assert choose_precision("bf16", "cpu", cpu_info("")) == (
        "bf16", "bf16 requested; this CPU has no native bf16, so it is emulated (slower than fp32)")
    assert choose_precision("bf16", "cpu", cooper_lake) == ("bf16", "bf16 requested")
