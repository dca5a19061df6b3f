"""Read rates of a drive measured on one file (``capsim measure-disk``): streaming 16 MiB reads (default
readahead) and random reads of 4 KiB .. 8 MiB at aligned random offsets with ``POSIX_FADV_RANDOM`` (one
request per read, one at a time), each pass after evicting the file from the page cache."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from capsim.measure.page_cache import PAGE, STREAM_READ_BYTES, MappedFile

MiB = 2**20
RANDOM_READ_SIZES = (4096, 64 * 1024, MiB, 8 * MiB)
RANDOM_READS_MAX = {4096: 2000, 64 * 1024: 800, MiB: 150, 8 * MiB: 30}
RATE_PASS_BUDGET_S = 0.4  # stop a random-read pass after this long (at least 10 reads)



def _stream_rate(f: MappedFile) -> dict[str, Any]:
    left = f.evict()
    os.posix_fadvise(f.fd, 0, 0, os.POSIX_FADV_NORMAL)
    buf = bytearray(STREAM_READ_BYTES)
    off, t0 = 0, time.perf_counter()
    while (got := os.preadv(f.fd, [buf], off)) > 0:
        off += got
    dt = time.perf_counter() - t0
    return {"bytes": off, "seconds": dt, "bytes_per_s": off / dt, "pages_cached_before": left}


def _random_rate(f: MappedFile, size: int, rng: np.random.Generator) -> dict[str, Any]:
    slots = f.size // size
    n = min(RANDOM_READS_MAX.get(size, 100), slots)
    offsets = rng.choice(slots, size=n, replace=False) * size
    left = f.evict()
    os.posix_fadvise(f.fd, 0, 0, os.POSIX_FADV_RANDOM)
    buf = bytearray(size)
    done, t0 = 0, time.perf_counter()
    for off in offsets:
        os.preadv(f.fd, [buf], int(off))
        done += 1
        if done >= 10 and time.perf_counter() - t0 > RATE_PASS_BUDGET_S:
            break
    dt = time.perf_counter() - t0
    cached = f.resident_pages()
    os.posix_fadvise(f.fd, 0, 0, os.POSIX_FADV_NORMAL)
    return {"reads": done, "seconds": dt, "bytes_per_s": done * size / dt, "s_per_read": dt / done,
            "pages_cached_before": left, "pages_cached_after": cached, "pages_requested": done * size // PAGE}


def rate_pass(f: MappedFile, rng: np.random.Generator, when: str) -> dict[str, Any]:
    """An untimed streaming pass (a warm-up, as the steps have: see RATE_PASSES_AFTER), a timed one, and one
    random-read pass per request size, each after evicting the file."""
    warm = _stream_rate(f)
    out: dict[str, Any] = {"when": when, "sequential_warmup": warm, "sequential": _stream_rate(f), "random": {}}
    for size in RANDOM_READ_SIZES:
        if f.size // size >= 10:
            out["random"][str(size)] = _random_rate(f, size, rng)
    return out


def combined_rates(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over all passes (spread over the run: the drive's rate drifts on a shared host)."""
    out: dict[str, Any] = {
        "sequential_bytes_per_s": float(np.median([p["sequential"]["bytes_per_s"] for p in passes])),
        "random_bytes_per_s": {}, "random_s_per_read": {},
        # no readahead: the cache holds only the pages asked for
        "random_readahead_off": all(r["pages_cached_after"] <= r["pages_requested"]
                                    for p in passes for r in p["random"].values()),
    }
    for size in passes[0]["random"]:
        got = [p["random"][size] for p in passes if size in p["random"]]
        out["random_bytes_per_s"][size] = float(np.median([r["bytes_per_s"] for r in got]))
        out["random_s_per_read"][size] = float(np.median([r["s_per_read"] for r in got]))
    out["random_4k_bytes_per_s"] = out["random_bytes_per_s"].get(str(PAGE))
    return out
