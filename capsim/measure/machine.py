"""Facts about the machine a probe or measurement runs on: CPU model, cores, memory, load from others.

Read from /proc and lscpu; no hostname is recorded.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


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
