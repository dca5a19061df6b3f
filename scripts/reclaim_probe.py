"""Does the machine take freed memory back? Time to fault in fresh pages after a gap of GEMM work.

Keeps ``--live-gb`` of memory in use, then repeats: run GEMMs for ``--gap-s`` seconds, allocate and fill
``--count`` fresh tensors of ``--fresh-gb`` each (all alive at once, as an eager engine's chain of
element-wise outputs), free them. Prints the fill time per byte of each fresh tensor: about 0.3 ns/B where
the guest kernel only zeroes pages it already holds; several ns/B where the hypervisor has taken the freed
pages back (virtio balloon free page reporting) and must back them again.

    python scripts/reclaim_probe.py --live-gb 5 --gap-s 8 --fresh-gb 1 --count 3

Used for validation/FAULTS.md. Needs torch (measurement side, not the prediction path).
"""

from __future__ import annotations

import time

import click

GEMM_SIDE = 1024  # the busy work: 512 x 1024 @ 1024 x 1024 fp32 matmuls (weights stay in cache)


@click.command()
@click.option("--live-gb", type=click.FloatRange(min=0), default=5.0, show_default=True, help="Memory kept in use (GB, 2^30 B).")
@click.option("--gap-s", type=click.FloatRange(min=0), default=8.0, show_default=True, help="GEMM work between rounds (s).")
@click.option("--fresh-gb", type=click.FloatRange(min=0.01), default=1.0, show_default=True, help="Size of each fresh tensor (GB).")
@click.option("--count", type=click.IntRange(min=1), default=3, show_default=True, help="Fresh tensors per round.")
@click.option("--rounds", type=click.IntRange(min=1), default=4, show_default=True, help="Rounds to run.")
def main(live_gb: float, gap_s: float, fresh_gb: float, count: int, rounds: int) -> None:
    import torch

    torch.set_num_threads(1)
    a, w = torch.randn(GEMM_SIDE // 2, GEMM_SIDE), torch.randn(GEMM_SIDE, GEMM_SIDE)
    live = torch.ones(int(live_gb * 2**30) // 4)  # noqa: F841 - held to keep the footprint
    nbytes = int(fresh_gb * 2**30)
    print(f"live {live_gb} GB, gap {gap_s} s, {count} x {fresh_gb} GB fresh per round: fill ns/B per tensor")
    for r in range(rounds):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < gap_s:
            torch.mm(a, w)
        held, per_byte = [], []
        for _ in range(count):
            t = time.perf_counter()
            x = torch.empty(nbytes // 4)
            x.fill_(1.0)
            per_byte.append((time.perf_counter() - t) / nbytes * 1e9)
            held.append(x)
        del held, x
        print(f"round {r}: " + " ".join(f"{v:.2f}" for v in per_byte), flush=True)


if __name__ == "__main__":
    main()
