"""Measure the local machine (``capsim probe``) and write it as a hardware entry of kind ``measured``.

What is measured (torch is imported inside the functions that use it)
    memory    read bandwidth: ``torch.sum`` over a float32 tensor (bytes read / time); copy bandwidth:
              ``dst.copy_(src)`` counting the bytes read plus the bytes written (a write-allocate cache
              moves a third more, not counted). On the CPU with ``torch.get_num_threads()`` threads.
    gemm      ``torch.mm`` of an M x K by a K x N matrix (``torch._int_mm`` for int8) per dtype, N = K fixed,
              M = 1, 2, 4, ... : 2 M N K FLOP (or integer OP) / time. The peak is the maximum over M; the
              whole curve is kept, and the M = 1 efficiency (rate at M = 1 / peak) is what decode sees.
              The same K x N matrix is used at every repeat, so it may be served by a cache that holds it.
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
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from capsim.errors import CapsimError
from capsim.measure.machine import _cpu_snapshot, cpu_busy_fraction, machine_facts, other_cpu_share
from capsim.units import format_quantity

PROBE_FORMAT = 1
GiB = 2**30
MiB = 2**20

Log = Callable[[str], None]


def _silent(_: str) -> None:
    pass


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


FULL = Settings(
    memory_bytes=GiB, gemm_nk=4096, gemm_nk_small=1024, gemm_cold_bytes=0, gemm_ms=tuple(2**i for i in range(12)),
    gpu_gemm_nk=8192, gpu_gemm_ms=tuple(2**i for i in range(14)), transfer_bytes=GiB,
    warmup=2, repeats=7, point_budget_s=2.0, read_chunk_bytes=16 * MiB,
)
QUICK = Settings(
    memory_bytes=16 * MiB, gemm_nk=256, gemm_nk_small=64, gemm_cold_bytes=0, gemm_ms=(1, 4, 16, 64, 256),
    gpu_gemm_nk=1024, gpu_gemm_ms=(1, 16, 256, 1024), transfer_bytes=16 * MiB,
    warmup=1, repeats=3, point_budget_s=0.2, read_chunk_bytes=MiB,
)

CPU_DTYPES = ("fp32", "bf16", "fp16", "int8")
GPU_DTYPES = ("fp32", "tf32", "bf16", "fp16", "int8")
# A dtype that runs at under this fraction of the fp32 peak is on a slow (emulated) path: it is kept in the
# curves but left out of the entry's peaks, so a prediction does not assume an engine would use it.
SLOW_PATH_FRACTION = 0.5
BUSY_WARNING = 0.1  # share of the CPUs busy before the probe above which the numbers are flagged


# ------------------------------------------------------------------ timing


def _median_time(fn: Callable[[], Any], timer: Callable[[Callable[[], Any]], float], s: Settings) -> dict:
    """Warm up, then time ``fn`` up to ``s.repeats`` times (at least 3; fewer past the point budget)."""
    first = timer(fn)  # also a warm-up
    for _ in range(s.warmup - 1 if first < s.point_budget_s / 4 else 0):
        timer(fn)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < s.repeats:
        samples.append(timer(fn))
        if len(samples) >= 3 and time.perf_counter() - start > s.point_budget_s:
            break
    return {"median_s": statistics.median(samples), "samples_s": samples}


def _cpu_timer(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cuda_timer(fn: Callable[[], Any]) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _timer(device: str) -> Callable[[Callable[[], Any]], float]:
    return _cuda_timer if device.startswith("cuda") else _cpu_timer


# ------------------------------------------------------------------ machine facts


def memory_bandwidth(s: Settings, device: str = "cpu", log: Log = _silent) -> dict[str, Any]:
    """Read (``torch.sum``) and copy (``dst.copy_(src)``, read + write bytes) bandwidth of one tensor."""
    import torch

    n = s.memory_bytes // 4
    nbytes = n * 4
    src = torch.ones(n, dtype=torch.float32, device=device)  # written: every page is touched
    dst = torch.zeros_like(src)
    timer = _timer(device)
    log(f"memory: read {format_quantity(nbytes, 'B', binary=True)} float32 on {device}")
    read = _median_time(lambda: torch.sum(src), timer, s)
    log(f"memory: copy {format_quantity(nbytes, 'B', binary=True)} on {device}")
    copy = _median_time(lambda: dst.copy_(src), timer, s)
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


# ------------------------------------------------------------------ GEMM


def _matrix(dtype: str, rows: int, cols: int, device: str, seed: int):
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    if dtype == "int8":
        return torch.randint(-8, 8, (rows, cols), dtype=torch.int8, generator=gen).to(device)
    tdt = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    return torch.randn(rows, cols, generator=gen).to(device=device, dtype=tdt)


def _gemm_fn(dtype: str, a, b) -> Callable[[], Any]:
    import torch

    if dtype == "int8":
        return lambda: torch._int_mm(a, b)
    return lambda: torch.mm(a, b)


def _gemm_op(dtype: str) -> str:
    if dtype == "int8":
        return "torch._int_mm(int8 M x K, int8 K x N) -> int32"
    return f"torch.mm({dtype} M x K, {dtype} K x N)" + (" with TF32 allowed" if dtype == "tf32" else "")


class _Tf32:
    """Allow TF32 in CUDA matmuls only for the 'tf32' dtype (fp32 is measured without it)."""

    def __init__(self, dtype: str, device: str):
        self.on = dtype == "tf32"
        self.cuda = device.startswith("cuda")

    def __enter__(self) -> None:
        if self.cuda:
            import torch

            self.old = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = self.on

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            import torch

            torch.backends.cuda.matmul.allow_tf32 = self.old


def gemm_curve(dtype: str, s: Settings, device: str = "cpu", log: Log = _silent) -> dict[str, Any]:
    """FLOP/s (integer OP/s for int8) of an M x K by K x N GEMM as M grows; the peak is the max over M."""
    import torch

    gpu = device.startswith("cuda")
    nk = s.gpu_gemm_nk if gpu else s.gemm_nk
    ms = s.gpu_gemm_ms if gpu else s.gemm_ms
    out: dict[str, Any] = {"dtype": dtype, "device": device, "n": nk, "k": nk, "points": [], "skipped_points": []}
    if dtype == "tf32" and not gpu:
        out["skipped"] = "tf32 is a GPU tensor-core mode"
        return out
    if dtype == "int8" and not hasattr(torch, "_int_mm"):
        out["skipped"] = f"torch {torch.__version__} has no torch._int_mm"
        return out
    timer = _timer(device)
    with _Tf32(dtype, device):
        try:  # does this dtype run at all?
            _gemm_fn(dtype, _matrix(dtype, 32, 32, device, 1), _matrix(dtype, 32, 32, device, 2))()
        except (RuntimeError, TypeError, NotImplementedError) as err:
            out["skipped"] = f"not supported by torch {torch.__version__} on {device}: {_first_line(err)}"
            return out
        log(f"gemm {dtype} on {device}: N = K = {nk}, M = {', '.join(map(str, ms))}")
        out["op"] = _gemm_op(dtype)
        b = _matrix(dtype, nk, nk, device, 2)
        weights = [b]
        if not gpu and s.gemm_cold_bytes:  # copies of the weight, cycled so that each call streams it from DRAM
            weights += [b.clone() for _ in range(max(0, -(-s.gemm_cold_bytes // (b.numel() * b.element_size())) - 1))]
            out["weights_cycled"] = len(weights)
            out["weights_cycled_bytes"] = len(weights) * b.numel() * b.element_size()
        turn = [0]
        for m in ms:
            a = _matrix(dtype, m, nk, device, 1)
            calls = [_gemm_fn(dtype, a, w) for w in weights]

            def call(calls=calls):
                turn[0] += 1
                return calls[turn[0] % len(calls)]()

            try:
                t = _median_time(call, timer, s)
            except (RuntimeError, TypeError, NotImplementedError) as err:  # e.g. CUDA _int_mm needs M > 16
                out["skipped_points"].append({"m": m, "reason": _first_line(err)})
                continue
            rate = 2.0 * m * nk * nk / t["median_s"]
            out["points"].append({"m": m, "flop_per_s": rate, **t})
            if gpu:
                torch.cuda.empty_cache()
    del b, weights
    if not out["points"]:
        out["skipped"] = "no shape ran: " + "; ".join(p["reason"] for p in out["skipped_points"][:2])
        return out
    best = max(out["points"], key=lambda p: p["flop_per_s"])
    out["peak_flop_per_s"] = best["flop_per_s"]
    out["peak_m"] = best["m"]
    first = out["points"][0]
    out["smallest_m"] = first["m"]
    out["smallest_m_efficiency"] = first["flop_per_s"] / best["flop_per_s"]
    elem = 1 if dtype == "int8" else (4 if dtype in ("fp32", "tf32") else 2)
    out["weight_bytes"] = nk * nk * elem
    out["weight_bytes_per_s_at_smallest_m"] = nk * nk * elem / first["median_s"]
    return out


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _mark_slow_paths(curves: dict[str, dict[str, Any]]) -> None:
    ref = curves.get("fp32", {}).get("peak_flop_per_s")
    for dt, c in curves.items():
        if "peak_flop_per_s" not in c:
            c["in_entry"] = False
            continue
        slow = ref is not None and dt not in ("fp32", "tf32") and c["peak_flop_per_s"] < SLOW_PATH_FRACTION * ref
        c["in_entry"] = not slow
        if slow:
            c["note"] = (f"peak under {SLOW_PATH_FRACTION:g} x the fp32 peak: torch runs {dt} on a slow path here; "
                         "left out of the entry's peaks")


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


def host_device_copies(s: Settings, log: Log = _silent) -> dict[str, Any]:
    """Host-to-device and device-to-host copy rates between pinned host memory and GPU 0."""
    import torch

    n = s.transfer_bytes
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    host.fill_(1)
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")
    log(f"gpu: host <-> device copies of {format_quantity(n, 'B', binary=True)} (pinned)")
    h2d = _median_time(lambda: dev.copy_(host, non_blocking=True), _cuda_timer, s)
    d2h = _median_time(lambda: host.copy_(dev, non_blocking=True), _cuda_timer, s)
    return {
        "bytes": n, "pinned": True,
        "host_to_device_bytes_per_s": n / h2d["median_s"], "device_to_host_bytes_per_s": n / d2h["median_s"],
        "host_to_device": h2d, "device_to_host": d2h,
    }


def gpu_probe(s: Settings, log: Log = _silent) -> dict[str, Any]:
    """Everything measured on GPU 0, or ``{"skipped": why}``."""
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
        out["gemm"] = {dt: gemm_curve(dt, s, "cuda", log) for dt in GPU_DTYPES}
        _mark_slow_paths(out["gemm"])
        out["transfers"] = host_device_copies(s, log)
    except RuntimeError as err:  # out of memory, a driver error: keep the CPU results
        out["error"] = _first_line(err)
    finally:
        torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------ file read


def file_read_rate(path: str | Path, s: Settings, log: Log = _silent) -> dict[str, Any]:
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


def run_probe(s: Settings, file: str | Path | None = None, log: Log = _silent) -> dict[str, Any]:
    """Facts, memory, GEMM curves per dtype, the GPU (when present) and the file read rate."""
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
    t0 = time.perf_counter()
    snap = _cpu_snapshot()
    with torch.inference_mode():
        memory = memory_bandwidth(s, "cpu", log)
        gemm = {dt: gemm_curve(dt, s, "cpu", log) for dt in CPU_DTYPES}
        _mark_slow_paths(gemm)
        small = replace(s, gemm_nk=s.gemm_nk_small)
        gemm_small = {dt: gemm_curve(dt, small, "cpu", log) for dt in CPU_DTYPES}
        gpu = gpu_probe(s, log)
    facts["other_processes_cpu_share_during"] = during = other_cpu_share(snap, _cpu_snapshot())
    if during is not None and during > BUSY_WARNING:
        log(f"warning: other processes kept {during:.0%} of the CPUs busy during the probe: the numbers may be low")
    file_read = file_read_rate(file, s, log) if file is not None else None
    try:
        facts["load_average_after"] = list(os.getloadavg())
    except (AttributeError, OSError):
        facts["load_average_after"] = None
    return {
        "format": PROBE_FORMAT,
        "facts": facts,
        "settings": asdict(s),
        "seconds": time.perf_counter() - t0,
        "cpu": {"memory": memory, "gemm": gemm, "gemm_small": gemm_small},
        "gpu": gpu,
        "file_read": file_read,
    }
