"""The host a run was measured on, as its run file records it: the CPU's name, and how busy other work kept
the machine during the run (``provenance.host_load``), from /proc/stat (Linux; None elsewhere).

Used by ``capsim measure`` (:mod:`capsim.measure.run`) and ``capsim measure-disk``
(:mod:`capsim.measure.disk_experts`).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_ticks() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine from /proc/stat (Linux), or None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / hz, sum(fields) / hz


def _host_load(start: tuple[float, float] | None, own_start: float) -> dict[str, Any] | None:
    """How busy the machine was with other work during the run: cores' worth of CPU not used by this process."""
    end = _cpu_ticks()
    if start is None or end is None:
        return None
    busy, total = end[0] - start[0], end[1] - start[1]
    own = time.process_time() - own_start
    cores = os.cpu_count() or 1
    wall = total / cores
    return {"cores": cores, "other_busy_cores": round(max(busy - own, 0.0) / wall, 2) if wall > 0 else None,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()]}
