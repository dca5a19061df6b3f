"""Does the machine take freed memory back, and what does faulting it in again cost? (``capsim probe``:
cpu.memory.reclaim; the engine profile's refault_s_per_byte and retained_free_bytes.)"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from capsim.measure.timing import Log, silent
from capsim.units import format_quantity

if TYPE_CHECKING:
    from capsim.measure.probe import Settings

# A refilled piece counts as refaulted (its pages backed again by the hypervisor) when its fill takes more than
# this many times the median fill of pieces refilled with no gap: a guest-backed fresh page costs ~0.3 ns/B to
# fault in and write on the validation machine, a hypervisor refault ~3 ns/B (validation/FAULTS.md).
REFAULT_FACTOR = 2.0
RECLAIM_BUSY_SIDE = 1024  # the gap's work: 512 x 1024 @ 1024 x 1024 fp32 matmuls (cache-resident)

def _refill_per_byte(s: Settings, gap_s: float) -> list[float]:
    """Back and free ``reclaim_bytes``, run GEMMs for ``gap_s``, then allocate the same bytes again in pieces
    (all held, each filled): seconds per byte of each piece's allocation and fill, in order."""
    import torch

    x = torch.empty(s.reclaim_bytes // 4)
    x.fill_(1.0)  # every page backed
    del x
    a, w = torch.randn(RECLAIM_BUSY_SIDE // 2, RECLAIM_BUSY_SIDE), torch.randn(RECLAIM_BUSY_SIDE, RECLAIM_BUSY_SIDE)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < gap_s:
        torch.mm(a, w)
    held, per_byte = [], []
    for _ in range(s.reclaim_bytes // s.reclaim_piece_bytes):
        t = time.perf_counter()
        piece = torch.empty(s.reclaim_piece_bytes // 4)
        piece.fill_(1.0)
        per_byte.append((time.perf_counter() - t) / s.reclaim_piece_bytes)
        held.append(piece)
    return per_byte


def memory_reclaim(s: Settings, log: Log = silent) -> dict[str, Any]:
    """Does the machine take freed memory back, and at what cost? A VM whose balloon driver reports free
    pages to the hypervisor (virtio-balloon free page reporting) loses the backing of memory left free for
    seconds; faulting it in again costs the hypervisor's page allocation on top of the guest's. Measured:
    ``reclaim_bytes`` backed and freed, ``reclaim_gap_s`` of GEMM work, then the same bytes refilled in pieces;
    pieces slower than REFAULT_FACTOR x the median of a refill with no gap are refaulted. retained_bytes: the
    bytes refilled before the first refaulted piece (the freed memory still backed; all of it when none
    refaulted); s_per_byte: median refaulted minus median no-gap refill time per byte (0 when none)."""
    log(f"memory: refill {format_quantity(s.reclaim_bytes, 'B', binary=True)} freed after "
        f"{s.reclaim_gap_s:g} s of GEMM work ({s.reclaim_rounds} rounds, with a no-gap baseline)")
    base = sorted(_refill_per_byte(s, 0.0))
    base_median = base[len(base) // 2]
    retained, slow = [], []
    for _ in range(s.reclaim_rounds):
        per_byte = _refill_per_byte(s, s.reclaim_gap_s)
        refaulted = [t > REFAULT_FACTOR * base_median for t in per_byte]
        first = refaulted.index(True) if any(refaulted) else len(per_byte)
        retained.append(first * s.reclaim_piece_bytes)
        slow += [t for t, r in zip(per_byte, refaulted, strict=True) if r]
    slow.sort()
    retained.sort()
    return {
        "bytes": s.reclaim_bytes, "piece_bytes": s.reclaim_piece_bytes, "gap_s": s.reclaim_gap_s,
        "rounds": s.reclaim_rounds,
        "retained_bytes": retained[len(retained) // 2],
        "s_per_byte": max(slow[len(slow) // 2] - base_median, 0.0) if slow else 0.0,
        "no_gap_refill_s_per_byte": base_median,
        "refaulted_pieces": len(slow),
        "method": "back and free the bytes, run GEMMs for gap_s, refill them in pieces (each torch.empty + fill_, "
        f"all held); a piece slower than {REFAULT_FACTOR:g} x the median no-gap refill per byte is refaulted; "
        "retained_bytes: bytes refilled before the first refaulted piece (median over rounds); s_per_byte: "
        "median refaulted minus median no-gap refill time per byte",
    }
