"""Where a training step's time goes: milliseconds per step and the top operators, per architecture.

    python benchmarks/train_step.py                         # the tutorial's net, batch 64 (the seed recipe)
    python benchmarks/train_step.py --arch small --batch-size 128 --optimizer adam   # the fast recipe's
    python benchmarks/train_step.py --precision bf16        # bf16 autocast (auto: where the CPU has it)

Prints the machine (CPU model, ISA flags, cores, torch) first. Runs the same step as `digitlab.train`
(channels-last batch, forward, cross-entropy, backward, optimizer; bf16 autocast with --precision bf16)
on random data, so it needs no dataset. Also times the step split over two single-threaded processes
(what `digitlab train --nproc 2 --threads 1` does, without the all-reduce) next to one two-threaded one,
and the arithmetic floor: the step's multiply-adds at the speed of the machine's best large matrix
multiply in the precision used (MKL sgemm for fp32, a bf16 matmul for bf16, measured here), i.e. what
no kernel in that precision can beat.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import statistics
import time

import torch
import torch.nn.functional as F
from _machine import machine_line

from digitlab.config import TrainConfig
from digitlab.hardware import choose_precision
from digitlab.model import ARCHITECTURES, build_torch, resolved_layers
from digitlab.optim import make_optimizer


def make_step(arch: str, batch: int, optimizer: str, precision: str = "fp32"):
    """One training step as digitlab.training runs it, on fixed random data."""
    torch.manual_seed(0)
    net = build_torch(ARCHITECTURES[arch]).to(memory_format=torch.channels_last)
    opt = make_optimizer(TrainConfig(optimizer=optimizer), net.parameters())
    x = torch.rand(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def train_flops_per_image(arch: str) -> float:
    """Floating-point operations of one training example: forward, plus weight gradients (as many as
    forward), plus input gradients for every layer but the first (the image needs none)."""
    total, first = 0.0, None
    for _, _, spec, s in resolved_layers(ARCHITECTURES[arch]):
        f = spec.flops(s)
        if not f:
            continue
        first = f if first is None else first
        total += f
    return 3 * total - first


def gemm_gflops(precision: str = "fp32") -> float:
    """The best of a few large matrix multiplies in the precision (fp32: MKL sgemm; bf16: oneDNN or
    PyTorch's own bf16 kernels): the practical peak of this machine for it."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048**3 / (time.perf_counter() - t0) / 1e9)
    return best


def ms_per_step(step, repeats: int = 5, steps: int = 40) -> float:
    """Median over `repeats` timed blocks: these VMs are noisy, one block can be 30% off."""
    for _ in range(10):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - t0) / steps * 1000)
    return statistics.median(times)


def _worker(args, precision: str, batch: int, queue) -> None:
    torch.set_num_threads(1)
    queue.put(ms_per_step(make_step(args.arch, batch, args.optimizer, precision)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="tutorial", choices=list(ARCHITECTURES))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--optimizer", default="rmsprop", choices=["rmsprop", "adam", "sgd"])
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="auto: bf16 autocast where the CPU has native bf16 (avx512_bf16, amx_bf16), else fp32")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    precision, why = choose_precision(args.precision, "cpu")
    print(machine_line())

    step = make_step(args.arch, args.batch_size, args.optimizer, precision)
    one = ms_per_step(step)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(args, precision, args.batch_size // 2, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    two = max(queue.get() for _ in procs)  # the slower rank sets the pace
    for p in procs:
        p.join()
    print(f"{args.arch}, batch {args.batch_size}, {args.optimizer}, {torch.get_num_threads()} threads, "
          f"{precision} ({why})")
    print(f"  one process:                      {one:6.2f} ms/step")
    print(f"  two 1-thread processes, half each: {two:6.2f} ms/step (no all-reduce counted)")
    flops = train_flops_per_image(args.arch) * args.batch_size
    peak = gemm_gflops(precision)
    floor = flops / peak / 1e6
    epoch = floor * math.ceil(60000 / args.batch_size) / 1000
    gemm = "sgemm" if precision == "fp32" else "a bf16 matmul"
    print(f"  arithmetic floor ({precision}):           {floor:6.2f} ms/step ({flops / 1e9:.2f} GFLOP at the "
          f"{peak:.0f} GFLOP/s of {gemm} here; {epoch:.1f} s per 60,000-image epoch)")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(30):
            step()
    rows = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    print(f"\n  {'ms/step':>8}  operator  [input shapes]")
    for e in rows[:args.top]:
        shapes = ", ".join(str(s) for s in e.input_shapes[:2] if s)
        print(f"  {e.self_cpu_time_total / 1000 / 30:8.2f}  {e.key}  [{shapes}]")


if __name__ == "__main__":
    main()
