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

import datetime as _dt
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from capsim.errors import CapsimError
from capsim.units import format_quantity, parse_quantity

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
    gemm_ms: tuple[int, ...]
    gpu_gemm_nk: int
    gpu_gemm_ms: tuple[int, ...]
    transfer_bytes: int  # host <-> device copy size
    warmup: int
    repeats: int
    point_budget_s: float  # stop repeating a point after this long (at least 3 timed calls)
    read_chunk_bytes: int  # file read size


FULL = Settings(
    memory_bytes=GiB, gemm_nk=4096, gemm_ms=tuple(2**i for i in range(12)),
    gpu_gemm_nk=8192, gpu_gemm_ms=tuple(2**i for i in range(14)), transfer_bytes=GiB,
    warmup=2, repeats=7, point_budget_s=2.0, read_chunk_bytes=16 * MiB,
)
QUICK = Settings(
    memory_bytes=16 * MiB, gemm_nk=256, gemm_ms=(1, 4, 16, 64, 256),
    gpu_gemm_nk=1024, gpu_gemm_ms=(1, 16, 256, 1024), transfer_bytes=16 * MiB,
    warmup=1, repeats=3, point_budget_s=0.2, read_chunk_bytes=MiB,
)

CPU_DTYPES = ("fp32", "bf16", "fp16", "int8")
GPU_DTYPES = ("fp32", "tf32", "bf16", "fp16", "int8")
# A dtype that runs at under this fraction of the fp32 peak is on a slow (emulated) path: it is kept in the
# curves but left out of the entry's peaks, so a prediction does not assume an engine would use it.
SLOW_PATH_FRACTION = 0.5
BUSY_WARNING = 0.1  # share of the CPUs busy before the probe above which the numbers are flagged


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


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


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _lscpu() -> dict[str, str]:
    if shutil.which("lscpu") is None:
        return {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError):
        return {}
    facts = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            facts[key.strip()] = value.strip()
    return facts


_VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD", "ARM": "Arm", "Apple": "Apple", "HygonGenuine": "Hygon"}
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni",
              "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "sve", "sve2", "bf16", "i8mm")


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(all CPUs' seconds, their busy seconds, this process's CPU seconds) from /proc/stat and getrusage."""
    fields = _read("/proc/stat").split("\n", 1)[0].split()
    if len(fields) < 6 or fields[0] != "cpu":
        return None
    try:
        import resource

        hz = os.sysconf("SC_CLK_TCK")
        ru = resource.getrusage(resource.RUSAGE_SELF)
    except (ImportError, ValueError, OSError):
        return None
    ticks = [int(x) for x in fields[1:9]]
    total = sum(ticks) / hz
    return total, total - (ticks[3] + ticks[4]) / hz, ru.ru_utime + ru.ru_stime


def other_cpu_share(before: tuple[float, float, float] | None, after: tuple[float, float, float] | None) -> float | None:
    """Share of all CPUs that OTHER processes kept busy between two snapshots (0 = the machine was ours)."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    others = (after[1] - before[1]) - (after[2] - before[2])
    return min(1.0, max(0.0, others / (after[0] - before[0])))


def cpu_busy_fraction(seconds: float = 1.0) -> float | None:
    """Share of all CPUs that other processes keep busy over ``seconds`` (sampled before the probe)."""
    a = _cpu_snapshot()
    time.sleep(seconds)
    return other_cpu_share(a, _cpu_snapshot())


def machine_facts() -> dict[str, Any]:
    """CPU model, cores, threads, memory, ISA flags, library versions, date; never the hostname."""
    import numpy
    import torch

    cpuinfo = _read("/proc/cpuinfo")
    first: dict[str, str] = {}
    cores: set[tuple[str, str]] = set()
    phys, core = "0", None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if core is not None:
                cores.add((phys, core))
            phys, core = "0", None
            continue
        key, value = key.strip(), value.strip()
        first.setdefault(key, value)
        if key == "physical id":
            phys = value
        elif key == "core id":
            core = value
    if core is not None:
        cores.add((phys, core))
    lscpu = _lscpu()
    model = first.get("model name") or lscpu.get("Model name") or platform.processor() or platform.machine()
    vendor_id = first.get("vendor_id") or lscpu.get("Vendor ID") or ""
    flags = set((first.get("flags") or first.get("Features") or lscpu.get("Flags") or "").split())
    threads = os.cpu_count() or 1
    n_cores = len(cores)
    if not n_cores and lscpu.get("Core(s) per socket", "").isdigit():
        n_cores = int(lscpu["Core(s) per socket"]) * int(lscpu.get("Socket(s)", "1") or 1)
    mem_kib = None
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", _read("/proc/meminfo"), re.M)
    if m:
        mem_kib = int(m.group(1))
    elif hasattr(os, "sysconf"):
        try:
            mem_kib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
        except (ValueError, OSError):
            mem_kib = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = threads
    try:
        load = list(os.getloadavg())
    except (AttributeError, OSError):
        load = None
    return {
        "date": utc_now(),
        "cpu_model": model,
        "cpu_vendor": _VENDORS.get(vendor_id, vendor_id or "unknown"),
        "cpu_vendor_id": vendor_id,
        "machine": platform.machine(),
        "cores": n_cores or threads,
        "cores_source": "/proc/cpuinfo (physical id, core id)" if cores else "lscpu or os.cpu_count()",
        "threads": threads,
        "threads_in_affinity": affinity,
        "torch_threads": torch.get_num_threads(),
        "memory_total_kib": mem_kib,
        "l3_cache": lscpu.get("L3 cache"),
        "isa_flags": sorted(flags.intersection(_ISA_FLAGS)),
        "virtualised": "hypervisor" in flags or bool(lscpu.get("Hypervisor vendor")),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "load_average_before": load,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "torch_mkldnn": bool(torch.backends.mkldnn.is_available()),
        "torch_mkl": bool(torch.backends.mkl.is_available()),
        "cuda_available": bool(torch.cuda.is_available()),
        "torch_cuda": torch.version.cuda,
    }


# ------------------------------------------------------------------ memory


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
        for m in ms:
            try:
                t = _median_time(_gemm_fn(dtype, _matrix(dtype, m, nk, device, 1), b), timer, s)
            except (RuntimeError, TypeError, NotImplementedError) as err:  # e.g. CUDA _int_mm needs M > 16
                out["skipped_points"].append({"m": m, "reason": _first_line(err)})
                continue
            rate = 2.0 * m * nk * nk / t["median_s"]
            out["points"].append({"m": m, "flop_per_s": rate, **t})
            if gpu:
                torch.cuda.empty_cache()
    del b
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
        "cpu": {"memory": memory, "gemm": gemm},
        "gpu": gpu,
        "file_read": file_read,
    }


# ------------------------------------------------------------------ the hardware entry


def _published(value: float, dimension: str, *, ops: bool = False) -> tuple[str, float]:
    """(as_published text at 4 significant digits, the SI value that text parses to)."""
    text = format_quantity(value, dimension, digits=4)
    if ops:
        text = text.replace("FLOPS", "OPS")
    return text, float(f"{parse_quantity(text).value:.12g}")  # 2.164 TFLOPS -> 2.164e12, not 2.1640000000000002e12


def _q(value: float, dimension: str, source: str, command: str, date: str, note: str | None = None,
       *, ops: bool = False, text: str | None = None) -> dict[str, Any]:
    if text is None:
        text, value = _published(value, dimension, ops=ops)
    q: dict[str, Any] = {"value": value, "as_published": text, "source": source, "kind": "measured",
                         "command": command, "date": date}
    if note:
        q["note"] = note
    return q


def _clean_model(model: str) -> str:
    name = re.sub(r"\((R|TM|tm|r)\)", "", model)
    name = re.sub(r"\bCPU\b", "", name)
    name = re.sub(r"@\s*[\d.]+\s*GHz", "", name)
    return " ".join(name.split()) or "unknown CPU"


def _gb(x: float) -> str:
    return format_quantity(x, "B/s")


def _fl(x: float, dt: str) -> str:
    return format_quantity(x, "FLOP/s").replace("FLOPS", "OPS" if dt == "int8" else "FLOPS")


def cpu_entry(result: dict[str, Any], item_id: str, source: str, command: str) -> dict[str, Any]:
    facts, mem, gemm = result["facts"], result["cpu"]["memory"], result["cpu"]["gemm"]
    date = facts["date"]
    threads_used = mem["threads"]
    entry: dict[str, Any] = {
        "id": item_id,
        "kind": "cpu",
        "name": _clean_model(facts["cpu_model"]),
        "vendor": facts["cpu_vendor"],
        "description": (
            f"Measured by capsim probe on {date}: {facts['cpu_model']} "
            f"({facts['cores']} cores, {facts['threads']} threads"
            + (", virtualised" if facts["virtualised"] else "")
            + f"), torch {facts['torch']} on {threads_used} threads."
            + (f" ISA: {', '.join(facts['isa_flags'])}." if facts["isa_flags"] else "")
        ),
        "cores": _q(facts["cores"], "1", source, command, date, text=f"{facts['cores']} cores",
                    note=facts["cores_source"]),
        "threads": _q(facts["threads"], "1", source, command, date, text=f"{facts['threads']} threads",
                      note="os.cpu_count()"),
        "memory_bandwidth_bytes_per_s": _q(
            mem["read_bytes_per_s"], "B/s", source, command, date,
            note=(f"read rate: torch.sum over {format_quantity(mem['bytes'], 'B', binary=True)} float32 on "
                  f"{threads_used} threads, median of {len(mem['read']['samples_s'])}; copy rate (read + write "
                  f"bytes, dst.copy_(src)) {_gb(mem['copy_bytes_per_s'])}. A measured rate, not the DRAM peak."),
        ),
    }
    if facts.get("memory_total_kib"):
        kib = facts["memory_total_kib"]
        entry["max_memory_bytes"] = _q(kib * 1024, "B", source, command, date, text=f"{kib} KiB",
                                       note="MemTotal in /proc/meminfo: the memory this machine has, not the "
                                       "socket's maximum")
    peaks: dict[str, Any] = {}
    for dt, c in gemm.items():
        if not c.get("in_entry"):
            continue
        peaks[dt] = _q(
            c["peak_flop_per_s"], "FLOP/s", source, command, date, ops=dt == "int8",
            note=(f"max over M of {c['op']} with N = K = {c['n']} on {threads_used} threads, reached at "
                  f"M = {c['peak_m']}; at M = {c['smallest_m']}: {_fl(c['points'][0]['flop_per_s'], dt)} "
                  f"({c['smallest_m_efficiency']:.1%} of the peak). Dense; curve in probe/{item_id}.json."),
        )
    if peaks:
        entry["peak_flop_per_s"] = peaks
    notes = [
        "Measured entry: memory type, channels, clocks and TDP of this machine are unknown and left out.",
        f"Full curves and machine facts: probe/{item_id}.json.",
    ]
    left_out = [f"{dt} ({c.get('skipped') or c.get('note')})" for dt, c in gemm.items() if not c.get("in_entry")]
    if left_out:
        notes.append("Not in peak_flop_per_s: " + "; ".join(left_out) + ".")
    during = facts.get("other_processes_cpu_share_during")
    if during is not None and during > BUSY_WARNING:
        notes.append(f"Other processes kept {during:.0%} of the CPUs busy during the probe: the numbers may be low.")
    elif during is not None:
        notes.append(f"Other processes used {during:.0%} of the CPUs during the probe.")
    if result.get("file_read"):
        fr = result["file_read"]
        notes.append(f"File read (--file): {_gb(fr['read_bytes_per_s'])} over "
                     f"{format_quantity(fr['bytes'], 'B', binary=True)}; {fr['page_cache_note']}.")
    entry["notes"] = " ".join(notes)
    return entry


def gpu_entry(result: dict[str, Any], item_id: str, source: str, command: str) -> dict[str, Any] | None:
    """An accelerator entry for the measured GPU, or None when one cannot be written (no power limit read)."""
    gpu = result.get("gpu") or {}
    if "skipped" in gpu or "memory" not in gpu or not gpu.get("power_limit"):
        return None
    try:
        watts = parse_quantity(gpu["power_limit"])
    except CapsimError:
        return None
    if watts.dimension != "W":
        return None
    date = result["facts"]["date"]
    mem = gpu["memory"]
    peaks = {
        dt: _q(c["peak_flop_per_s"], "FLOP/s", source, command, date, ops=dt == "int8",
               note=f"max over M of {c['op']} with N = K = {c['n']}, reached at M = {c['peak_m']}; "
               f"{c['smallest_m_efficiency']:.1%} of it at M = {c['smallest_m']}. Dense.")
        for dt, c in gpu.get("gemm", {}).items() if c.get("in_entry")
    }
    if not peaks:
        return None
    tr = gpu.get("transfers") or {}
    notes = [f"Measured entry; full curves in probe/{item_id.removesuffix('-gpu')}.json."]
    if tr:
        notes.append(f"Pinned host-to-device {_gb(tr['host_to_device_bytes_per_s'])}, device-to-host "
                     f"{_gb(tr['device_to_host_bytes_per_s'])} ({format_quantity(tr['bytes'], 'B', binary=True)} copies).")
    return {
        "id": item_id,
        "kind": "accelerator",
        "name": gpu["name"],
        "vendor": gpu["vendor"],
        "description": f"Measured by capsim probe on {date} (compute capability {gpu['compute_capability']}, "
        f"driver {gpu.get('driver') or 'unknown'}).",
        "memory": {
            "type": "unknown",
            "capacity_bytes": _q(gpu["memory_bytes"], "B", source, command, date, text=f"{gpu['memory_bytes']} B",
                                 note="torch.cuda.get_device_properties(0).total_memory"),
            "bandwidth_bytes_per_s": _q(mem["read_bytes_per_s"], "B/s", source, command, date,
                                        note=f"read rate (torch.sum); copy rate {_gb(mem['copy_bytes_per_s'])}"),
        },
        "peak_flop_per_s": peaks,
        "tdp_w": _q(watts.value, "W", source, command, date, text=gpu["power_limit"],
                    note="nvidia-smi --query-gpu=power.limit"),
        "compute_units": _q(gpu["multiprocessors"], "1", source, command, date, text=f"{gpu['multiprocessors']} SMs"),
        "notes": " ".join(notes),
    }


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _yaml(header: str, data: dict[str, Any]) -> str:
    body = yaml.safe_dump(data, sort_keys=False, width=110, allow_unicode=True, default_flow_style=False)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


def write_entry(result: dict[str, Any], out: str | Path, item_id: str, command: str) -> dict[str, Path]:
    """Write the entry, its source and the JSON; returns the paths written."""
    out = Path(out)
    facts = result["facts"]
    source = f"probe-{item_id}"
    written: dict[str, Path] = {}
    cpu = cpu_entry(result, item_id, source, command)
    gpu_id = f"{item_id}-gpu"
    gpu = gpu_entry(result, gpu_id, source, command)
    versions = f"torch {facts['torch']}, numpy {facts['numpy']}, Python {facts['python']}"
    src = {source: {
        "title": f"capsim probe of the local machine ({item_id}), {facts['date']}",
        "document": f"{command} (run {facts['date']}; {versions})",
        "tier": "measured",
        "note": f"{facts['cpu_model']}, {facts['os']}; full results in probe/{item_id}.json",
    }}
    header = f"Written by: {command}\nDate: {facts['date']}; {versions}."
    written["source"] = out / "sources" / f"{item_id}.yaml"
    written["cpu"] = out / "cpus" / f"{item_id}.yaml"
    written["json"] = out / "probe" / f"{item_id}.json"
    _write_atomic(written["source"], _yaml(header, src))
    _write_atomic(written["cpu"], _yaml(header + "\nMeasured on this machine; see probe/" + item_id + ".json.", cpu))
    if gpu is not None:
        written["gpu"] = out / "accelerators" / f"{gpu_id}.yaml"
        _write_atomic(written["gpu"], _yaml(header, gpu))
    elif "skipped" not in (result.get("gpu") or {"skipped": ""}):
        result["gpu"]["entry_note"] = "no accelerator entry written: the power limit (tdp_w) could not be read"
    doc = {"command": command, "id": item_id, "source": source, **result}
    _write_atomic(written["json"], json.dumps(doc, indent=1, default=json_default) + "\n")
    return written


def json_default(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Human lines of the key numbers."""
    mem, gemm = result["cpu"]["memory"], result["cpu"]["gemm"]
    lines = [f"cpu memory: read {_gb(mem['read_bytes_per_s'])}, copy {_gb(mem['copy_bytes_per_s'])} "
             f"({mem['threads']} threads)"]
    for dt, c in gemm.items():
        if "peak_flop_per_s" in c:
            flag = "" if c.get("in_entry") else " (not in the entry: slow path)"
            lines.append(f"cpu gemm {dt}: peak {_fl(c['peak_flop_per_s'], dt)} at M = {c['peak_m']}, "
                         f"M = {c['smallest_m']}: {c['smallest_m_efficiency']:.1%} of peak{flag}")
        else:
            lines.append(f"cpu gemm {dt}: skipped ({c.get('skipped')})")
    gpu = result.get("gpu") or {}
    if "skipped" in gpu:
        lines.append(f"gpu: skipped ({gpu['skipped']})")
    else:
        if "memory" in gpu:
            lines.append(f"gpu {gpu['name']}: read {_gb(gpu['memory']['read_bytes_per_s'])}, "
                         f"copy {_gb(gpu['memory']['copy_bytes_per_s'])}")
        for dt, c in gpu.get("gemm", {}).items():
            if "peak_flop_per_s" in c:
                lines.append(f"gpu gemm {dt}: peak {_fl(c['peak_flop_per_s'], dt)} at M = {c['peak_m']}")
        if gpu.get("transfers"):
            tr = gpu["transfers"]
            lines.append(f"gpu copies: host-to-device {_gb(tr['host_to_device_bytes_per_s'])}, "
                         f"device-to-host {_gb(tr['device_to_host_bytes_per_s'])}")
        if gpu.get("error"):
            lines.append(f"gpu: stopped early: {gpu['error']}")
    if result.get("file_read"):
        fr = result["file_read"]
        lines.append(f"file read: {_gb(fr['read_bytes_per_s'])} over {format_quantity(fr['bytes'], 'B', binary=True)}"
                     f" (page-cache drop {'requested' if fr['page_cache_drop_requested'] else 'not possible'})")
    return lines
