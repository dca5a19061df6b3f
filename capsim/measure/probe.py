"""Measure the local machine (``capsim probe``) and write it as a hardware entry of kind ``measured``.

What is measured (torch is imported inside the functions that use it)
    memory    read bandwidth: ``torch.sum`` over a float32 tensor (bytes read / time); copy bandwidth:
              ``dst.copy_(src)`` counting the bytes read plus the bytes written (a write-allocate cache
              moves a third more, not counted). On the CPU with ``torch.get_num_threads()`` threads.
    linear    ``--gemm-shapes-of MODEL`` / ``--gemm-shape KxN``: the same as M grows, for given weight shapes run
              as ``torch.nn.Linear`` runs them (``x @ W.T``), cold (:func:`capsim.measure.probe_gemm.linear_curve`).
    gemm      ``torch.mm`` of an M x K by a K x N matrix (``torch._int_mm`` for int8) per dtype, N = K fixed,
              M = 1, 2, 4, ... : 2 M N K FLOP (or integer OP) / time. The peak is the maximum over M; the
              whole curve is kept, and the M = 1 efficiency (rate at M = 1 / peak) is what decode sees.
              The same K x N matrix is used at every repeat (a cache may serve it) unless ``--cold-weights``
              cycles through 1 GiB of copies (:mod:`capsim.measure.probe_gemm`).
    gpu       when ``torch.cuda.is_available()``: device memory and GEMM as above (timed with CUDA events),
              and host-to-device / device-to-host copies from and to pinned host memory.
    file      ``--file PATH``: one sequential pass of large reads over the file after asking the kernel to
              drop it from the page cache (``posix_fadvise(POSIX_FADV_DONTNEED)``); the page cache may still
              serve it (the advice is not binding), which the result says.

Every point runs warm-up calls, then up to ``repeats`` timed calls (fewer, at least three, when a point
runs past its time budget); the median is reported and all samples are kept.

The entry (:func:`write_entry`) is ``<out>/cpus/<id>.yaml`` (plus ``<out>/accelerators/<id>-gpu.yaml``
when a GPU was measured and its power limit could be read), its source ``<out>/sources/<id>.yaml``
(source ``probe-<id>``, tier ``measured``) and the full curves and machine facts in
``<out>/probe/<id>.json`` (the YAML schema forbids unknown fields). The hostname is never recorded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from capsim.errors import CapsimError
from capsim.measure.machine import _cpu_snapshot, cpu_busy_fraction, machine_facts, other_cpu_share
from capsim.measure.probe_gemm import CPU_DTYPES, GPU_DTYPES, _mark_slow_paths, gemm_curve, linear_curve
from capsim.measure.reclaim import memory_reclaim
from capsim.measure.timing import Log, cuda_timer, first_line, median_time, silent, timer_for
from capsim.units import format_quantity

PROBE_FORMAT = 1
GiB = 2**30
MiB = 2**20



@dataclass(frozen=True)
class Settings:
    memory_bytes: int  # size of the tensor read / copied
    gemm_nk: int  # N = K of the CPU GEMM
    gemm_nk_small: int  # N = K of a second, smaller CPU GEMM curve (small-M efficiency depends on size)
    gemm_cold_bytes: int  # CPU GEMMs cycle through copies of the weight totalling this, so each call reads
    # its weight from DRAM as a decode step does (0: one weight, cache-hot)
    gemm_ms: tuple[int, ...]
    gpu_gemm_nk: int
    gpu_gemm_ms: tuple[int, ...]
    transfer_bytes: int  # host <-> device copy size
    warmup: int
    repeats: int
    point_budget_s: float  # stop repeating a point after this long (at least 3 timed calls)
    read_chunk_bytes: int  # file read size
    # Weight shapes (K in, N out) to measure as torch.nn.Linear runs them, cold (probe_gemm.linear_curve)
    gemm_shapes: tuple[tuple[int, int], ...] = ()
    gemm_shape_dtypes: tuple[str, ...] = ("fp32",)
    # torch's math SDPA (taken when query/key and value head dims differ): (heads, length) of the probe call
    attention_math_shape: tuple[int, int] = (6, 1024)
    # Freed-memory reclaim (memory_reclaim): bytes freed and refilled in pieces of reclaim_piece_bytes after
    # reclaim_gap_s of GEMM work, reclaim_rounds times
    reclaim_bytes: int = 3 * GiB
    reclaim_piece_bytes: int = 64 * MiB
    reclaim_gap_s: float = 8.0
    reclaim_rounds: int = 3


FULL = Settings(
    memory_bytes=GiB, gemm_nk=4096, gemm_nk_small=1024, gemm_cold_bytes=0, gemm_ms=tuple(2**i for i in range(12)),
    gpu_gemm_nk=8192, gpu_gemm_ms=tuple(2**i for i in range(14)), transfer_bytes=GiB,
    warmup=2, repeats=7, point_budget_s=2.0, read_chunk_bytes=16 * MiB,
)
QUICK = Settings(
    memory_bytes=16 * MiB, gemm_nk=256, gemm_nk_small=64, gemm_cold_bytes=0, gemm_ms=(1, 4, 16, 64, 256),
    gpu_gemm_nk=1024, gpu_gemm_ms=(1, 16, 256, 1024), transfer_bytes=16 * MiB,
    warmup=1, repeats=3, point_budget_s=0.2, read_chunk_bytes=MiB, attention_math_shape=(2, 128),
    reclaim_bytes=64 * MiB, reclaim_piece_bytes=8 * MiB, reclaim_gap_s=0.05, reclaim_rounds=1,
)
MATH_ATTENTION_QK_DIM, MATH_ATTENTION_V_DIM = 192, 128  # MLA's query/key and value head dims (DeepSeek-V2/V3 config)

BUSY_WARNING = 0.1  # share of the CPUs busy before the probe above which the numbers are flagged


# ------------------------------------------------------------------ machine facts


def memory_bandwidth(s: Settings, device: str = "cpu", log: Log = silent) -> dict[str, Any]:
    """Read (``torch.sum``) and copy (``dst.copy_(src)``, read + write bytes) bandwidth of one tensor."""
    import torch

    n = s.memory_bytes // 4
    nbytes = n * 4
    src = torch.ones(n, dtype=torch.float32, device=device)  # written: every page is touched
    dst = torch.zeros_like(src)
    timer = timer_for(device)
    log(f"memory: read {format_quantity(nbytes, 'B', binary=True)} float32 on {device}")
    read = median_time(lambda: torch.sum(src), timer, s)
    log(f"memory: copy {format_quantity(nbytes, 'B', binary=True)} on {device}")
    copy = median_time(lambda: dst.copy_(src), timer, s)
    return {
        "device": device,
        "bytes": nbytes,
        "threads": torch.get_num_threads() if device == "cpu" else None,
        "read_bytes_per_s": nbytes / read["median_s"],
        "copy_bytes_per_s": 2 * nbytes / copy["median_s"],
        "read": read,
        "copy": copy,
        "method": "read: torch.sum over a float32 tensor (bytes / time); copy: dst.copy_(src), "
        "(bytes read + bytes written) / time",
    }


def first_touch(s: Settings, log: Log = silent) -> dict[str, Any]:
    """Extra time per byte of writing a tensor that was just allocated (fresh pages: the kernel faults in and
    zeroes each page on first touch) over writing one already mapped: median ``torch.empty(n).fill_(1)`` minus
    median ``x.fill_(1)``, over the tensor's bytes. glibc malloc maps every block above its mmap threshold
    afresh (and unmaps it on free), so a CPU torch engine pays this for each large activation, every step."""
    import torch

    n = s.memory_bytes // 4
    nbytes = n * 4
    warm = torch.empty(n, dtype=torch.float32)
    warm.fill_(0.0)  # every page mapped once
    timer = timer_for("cpu")
    log(f"memory: first-touch writes of {format_quantity(nbytes, 'B', binary=True)} (fresh vs mapped pages)")
    mapped = median_time(lambda: warm.fill_(1.0), timer, s)
    fresh = median_time(lambda: torch.empty(n, dtype=torch.float32).fill_(1.0), timer, s)
    extra = max(fresh["median_s"] - mapped["median_s"], 0.0)
    return {
        "bytes": nbytes,
        "s_per_byte": extra / nbytes,
        "mapped_write": mapped,
        "fresh_write": fresh,
        "method": "median time of torch.empty(n).fill_(1.0) (fresh pages) minus median time of x.fill_(1.0) on a "
        "tensor whose pages are mapped, over the bytes written (float32, n x 4 bytes)",
    }


def attention_math(s: Settings, log: Log = silent) -> dict[str, Any]:
    """Time per score element of torch's math SDPA beyond its two matmuls. With unequal query/key and value
    head dims torch's CPU SDPA takes the math path (aten/src/ATen/native/transformers/attention.cpp,
    _scaled_dot_product_attention_math): it scales K, computes the full L x L scores, builds the causal mask
    (tril, where) and adds it, then _safe_softmax (softmax, isneginf, all, where), then multiplies by V. On one
    CPU thread those element-wise kernels run far below the memory bandwidth. Measured: the median call
    ``F.scaled_dot_product_attention(q, k, v, is_causal=True)`` minus the median of its two matmuls done
    alone (Q K^T and P V over the full L x L), over the B x heads x L x L score elements (fp32)."""
    import torch
    import torch.nn.functional as F

    heads, length = s.attention_math_shape
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, heads, length, MATH_ATTENTION_QK_DIM, generator=g) for _ in range(2))
    v = torch.randn(1, heads, length, MATH_ATTENTION_V_DIM, generator=g)
    p = torch.softmax(torch.randn(1, heads, length, length, generator=g), dim=-1)
    timer = timer_for("cpu")
    log(f"attention: torch math SDPA, {heads} heads x {length} tokens, head dims {MATH_ATTENTION_QK_DIM}/"
        f"{MATH_ATTENTION_V_DIM}")
    sdpa = median_time(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), timer, s)
    matmuls = median_time(lambda: (q @ k.transpose(-2, -1), p @ v), timer, s)
    scores = heads * length * length
    return {
        "heads": heads, "length": length, "qk_head_dim": MATH_ATTENTION_QK_DIM, "v_head_dim": MATH_ATTENTION_V_DIM,
        "score_elements": scores,
        "s_per_score": max(sdpa["median_s"] - matmuls["median_s"], 0.0) / scores,
        "sdpa": sdpa, "matmuls": matmuls,
        "method": "median F.scaled_dot_product_attention(q, k, v, is_causal=True) (fp32, unequal head dims: the "
        "math path) minus median of q @ k^T and softmax(scores) @ v over the full L x L, over the score elements",
    }


# ------------------------------------------------------------------ GEMM


# ------------------------------------------------------------------ GPU


def _nvidia_smi(field: str) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout.strip().splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else ""
    return text if text and "N/A" not in text and "Not Supported" not in text else None


def host_device_copies(s: Settings, log: Log = silent) -> dict[str, Any]:
    """Host-to-device and device-to-host copy rates between pinned host memory and GPU 0."""
    import torch

    n = s.transfer_bytes
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    host.fill_(1)
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")
    log(f"gpu: host <-> device copies of {format_quantity(n, 'B', binary=True)} (pinned)")
    h2d = median_time(lambda: dev.copy_(host, non_blocking=True), cuda_timer, s)
    d2h = median_time(lambda: host.copy_(dev, non_blocking=True), cuda_timer, s)
    return {
        "bytes": n, "pinned": True,
        "host_to_device_bytes_per_s": n / h2d["median_s"], "device_to_host_bytes_per_s": n / d2h["median_s"],
        "host_to_device": h2d, "device_to_host": d2h,
    }


def gpu_probe(s: Settings, log: Log = silent, tick: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Everything measured on GPU 0, or ``{"skipped": why}``. ``tick()`` is called after each of its
    :func:`gpu_steps` steps."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "torch.cuda.is_available() is False (no GPU, or a CPU-only torch)"}
    props = torch.cuda.get_device_properties(0)
    out: dict[str, Any] = {
        "name": props.name,
        "vendor": "AMD" if getattr(torch.version, "hip", None) else "NVIDIA",
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_bytes": int(props.total_memory),
        "multiprocessors": int(props.multi_processor_count),
        "power_limit": _nvidia_smi("power.limit"),
        "driver": _nvidia_smi("driver_version"),
    }
    try:
        out["memory"] = memory_bandwidth(s, "cuda", log)
        tick()
        out["gemm"] = {dt: (gemm_curve(dt, s, "cuda", log), tick())[0] for dt in GPU_DTYPES}
        _mark_slow_paths(out["gemm"])
        out["transfers"] = host_device_copies(s, log)
        tick()
    except RuntimeError as err:  # out of memory, a driver error: keep the CPU results
        out["error"] = first_line(err)
    finally:
        torch.cuda.empty_cache()
    return out


def gpu_steps() -> int:
    """Steps of :func:`gpu_probe` (memory, one GEMM curve per dtype, copies); 0 without a GPU."""
    import torch

    return 2 + len(GPU_DTYPES) if torch.cuda.is_available() else 0


# ------------------------------------------------------------------ file read


def file_read_rate(path: str | Path, s: Settings, log: Log = silent) -> dict[str, Any]:
    """One sequential pass of large reads over ``path`` after advising the kernel to drop it from the cache."""
    p = Path(path)
    if not p.exists():
        raise CapsimError(f"--file {p}: no such file")
    if not p.is_file():
        raise CapsimError(f"--file {p}: not a regular file")
    size = p.stat().st_size
    if size == 0:
        raise CapsimError(f"--file {p}: the file is empty")
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError as err:
        raise CapsimError(f"--file {p}: cannot open: {err.strerror}") from None
    try:
        if hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                dropped, how = True, "posix_fadvise(POSIX_FADV_DONTNEED) accepted (advice: pages in use may stay cached)"
            except OSError as err:
                dropped, how = False, f"posix_fadvise(POSIX_FADV_DONTNEED) failed: {err.strerror}"
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except OSError:
                pass
        else:
            dropped, how = False, "posix_fadvise is not available on this platform"
        log(f"file: reading {format_quantity(size, 'B', binary=True)} in {format_quantity(s.read_chunk_bytes, 'B', binary=True)} reads")
        buf = bytearray(s.read_chunk_bytes)
        view = memoryview(buf)
        total = 0
        t0 = time.perf_counter()
        while True:
            got = os.readv(fd, [view])
            if got <= 0:
                break
            total += got
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
    if total == 0 or elapsed <= 0:
        raise CapsimError(f"--file {p}: nothing could be read")
    return {
        "path": str(p),
        "bytes": total,
        "seconds": elapsed,
        "read_bytes_per_s": total / elapsed,
        "read_size_bytes": s.read_chunk_bytes,
        "page_cache_drop_requested": dropped,
        "page_cache_note": how + ("; the page cache may still have served part of the file, which makes the "
                                  "rate an upper bound of the device's" if dropped else
                                  "; the page cache may have served the file: the rate is an upper bound"),
    }


# ------------------------------------------------------------------ the whole probe


def probe_steps(s: Settings, file: str | Path | None = None) -> int:
    """Measurement steps of :func:`run_probe`: memory bandwidth, first touch, reclaim, attention, one per GEMM
    curve (CPU dtypes, at two sizes), one per weight shape and dtype, the GPU's (:func:`gpu_steps`), the file."""
    shapes = len(s.gemm_shapes) * len(s.gemm_shape_dtypes)
    return 4 + 2 * len(CPU_DTYPES) + shapes + gpu_steps() + (1 if file is not None else 0)


def run_probe(s: Settings, file: str | Path | None = None, log: Log = silent,
              on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Facts, memory, GEMM curves per dtype, the GPU (when present) and the file read rate.
    ``on_progress(done, total)`` is called as the measurement steps (:func:`probe_steps`) start and finish."""
    import torch

    if file is not None:  # fail before minutes of measuring
        fp = Path(file)
        if not fp.is_file():
            raise CapsimError(f"--file {fp}: {'not a regular file' if fp.exists() else 'no such file'}")
    facts = machine_facts()
    facts["cpu_busy_before"] = busy = cpu_busy_fraction(0.5 if s is QUICK else 1.0)
    if busy is not None and busy > BUSY_WARNING:
        log(f"warning: other processes kept {busy:.0%} of the CPUs busy before the probe: the numbers may be low")
    log(f"probe: {facts['cpu_model']}, {facts['cores']} cores, {facts['threads']} threads, "
        f"torch {facts['torch']} with {facts['torch_threads']} threads")
    total, done = probe_steps(s, file), [0]

    def tick(to: int | None = None) -> None:
        done[0] = done[0] + 1 if to is None else to
        if on_progress is not None:
            on_progress(done[0], total)

    tick(0)
    t0 = time.perf_counter()
    snap = _cpu_snapshot()
    with torch.inference_mode():
        memory = memory_bandwidth(s, "cpu", log)
        tick()
        memory["first_touch"] = first_touch(s, log)
        tick()
        memory["reclaim"] = memory_reclaim(s, log)
        tick()
        attention = attention_math(s, log)
        tick()
        gemm = {}
        for dt in CPU_DTYPES:
            gemm[dt] = gemm_curve(dt, s, "cpu", log)
            tick()
        _mark_slow_paths(gemm)
        small = replace(s, gemm_nk=s.gemm_nk_small)
        gemm_small = {}
        for dt in CPU_DTYPES:
            gemm_small[dt] = gemm_curve(dt, small, "cpu", log)
            tick()
        gemm_linear: dict[str, list[dict[str, Any]]] = {}
        for dt in s.gemm_shape_dtypes if s.gemm_shapes else ():
            gemm_linear[dt] = []
            for k, n in s.gemm_shapes:
                gemm_linear[dt].append(linear_curve(dt, k, n, s, log))
                tick()
        before_gpu = done[0]
        gpu = gpu_probe(s, log, tick)
        tick(before_gpu + gpu_steps())  # the GPU's steps count as done when it stopped early (an error)
    facts["other_processes_cpu_share_during"] = during = other_cpu_share(snap, _cpu_snapshot())
    if during is not None and during > BUSY_WARNING:
        log(f"warning: other processes kept {during:.0%} of the CPUs busy during the probe: the numbers may be low")
    file_read = file_read_rate(file, s, log) if file is not None else None
    tick(total)
    try:
        facts["load_average_after"] = list(os.getloadavg())
    except (AttributeError, OSError):
        facts["load_average_after"] = None
    return {
        "format": PROBE_FORMAT,
        "facts": facts,
        "settings": asdict(s),
        "seconds": time.perf_counter() - t0,
        "cpu": {"memory": memory, "gemm": gemm, "gemm_small": gemm_small, "gemm_linear": gemm_linear,
                "attention_math": attention},
        "gpu": gpu,
        "file_read": file_read,
    }
