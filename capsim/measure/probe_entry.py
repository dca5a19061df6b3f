"""The hardware entry a probe writes: a measured CPU (and GPU) YAML item, its source, and the full curves.

Every number is a Quantity of kind ``measured`` whose ``as_published`` text parses back to its value;
files are written atomically. The measurements themselves come from :mod:`capsim.measure.probe`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from capsim.atomic import write_text
from capsim.errors import CapsimError
from capsim.measure.probe import BUSY_WARNING
from capsim.units import format_quantity, parse_quantity

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
            note=(f"max over M of {c['op']} with N = K = {c['n']} on {threads_used} threads"
                  + (f" (cycling {c['weights_cycled']} copies of the weight, so each call reads it from DRAM)"
                     if c.get("weights_cycled", 1) > 1 else "") + ", reached at "
                  f"M = {c['peak_m']}; at M = {c['smallest_m']}: {_fl(c['points'][0]['flop_per_s'], dt)} "
                  f"({c['smallest_m_efficiency']:.1%} of the peak). Dense; curve in probe/{item_id}.json."),
        )
    if peaks:
        entry["peak_flop_per_s"] = peaks
    faults = memory_faults(mem, source, command, date)
    if faults:
        entry["memory_faults"] = faults
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


def memory_faults(mem: dict[str, Any], source: str, command: str, date: str) -> dict[str, Any] | None:
    """The entry's memory_faults: first touch (cpu.memory.first_touch) and, when measured, the reclaim of freed
    memory (cpu.memory.reclaim, with its own command and date when ``capsim probe --add-reclaim`` added it)."""
    ft = mem.get("first_touch")
    if not ft:
        return None
    out = {"first_touch_s_per_byte": _q(ft["s_per_byte"], "s/B", source, command, date, note=ft["method"])}
    rc = mem.get("reclaim")
    if rc:
        cmd, when = rc.get("command", command), rc.get("date", date)
        out["refault_s_per_byte"] = _q(rc["s_per_byte"], "s/B", source, cmd, when, note=rc["method"])
        retained = int(rc["retained_bytes"])
        text = f"{retained // 2**20} MiB" if retained % 2**20 == 0 else f"{retained} B"
        out["retained_free_bytes"] = _q(retained, "B", source, cmd, when, text=text,
                                        note=f"freed memory still backed after {rc['gap_s']:g} s of GEMM work "
                                        f"({rc['rounds']} rounds, {format_quantity(rc['piece_bytes'], 'B', binary=True)} "
                                        "pieces)")
    return out


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
    write_text(path, text, fsync=True)


def _yaml(header: str, data: dict[str, Any]) -> str:
    body = yaml.safe_dump(data, sort_keys=False, width=110, allow_unicode=True, default_flow_style=False)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


PROBE_FORMAT = "capsim-probe"  # the JSON result's "format" (capsim.outputs recognises it as capsim's own)


def destinations(out: str | Path, item_id: str) -> dict[str, Path]:
    """The files a probe writes under ``out``, by part (and their kind for :func:`capsim.outputs.check_output`)."""
    out = Path(out)
    return {"source": out / "sources" / f"{item_id}.yaml", "cpu": out / "cpus" / f"{item_id}.yaml",
            "json": out / "probe" / f"{item_id}.json", "gpu": out / "accelerators" / f"{item_id}-gpu.yaml"}


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
    written.update({k: v for k, v in destinations(out, item_id).items() if k != "gpu"})
    _write_atomic(written["source"], _yaml(header, src))
    _write_atomic(written["cpu"], _yaml(header + "\nMeasured on this machine; see probe/" + item_id + ".json.", cpu))
    if gpu is not None:
        written["gpu"] = destinations(out, item_id)["gpu"]
        _write_atomic(written["gpu"], _yaml(header, gpu))
    elif "skipped" not in (result.get("gpu") or {"skipped": ""}):
        result["gpu"]["entry_note"] = "no accelerator entry written: the power limit (tdp_w) could not be read"
    doc = {"format": PROBE_FORMAT, "command": command, "id": item_id, "source": source, **result}
    _write_atomic(written["json"], json.dumps(doc, indent=1, default=json_default) + "\n")
    return written


def update_memory_faults(entry: Path, result: dict[str, Any]) -> bool:
    """Rewrite the memory_faults of an existing CPU entry from a probe result (``capsim probe --add-reclaim``),
    keeping the rest of the entry and its header; False when there is no entry to update."""
    try:
        text = Path(entry).read_text()
    except OSError:
        return False
    data = yaml.safe_load(text)
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    faults = memory_faults(result["cpu"]["memory"], result.get("source", data["cores"]["source"]),
                           result.get("command", data["cores"].get("command", "")), data["cores"].get("date", ""))
    if faults is None:
        return False
    notes = data.pop("notes", None)
    data["memory_faults"] = faults
    if notes is not None:
        data["notes"] = notes
    _write_atomic(Path(entry), header + yaml.safe_dump(data, sort_keys=False, width=110, allow_unicode=True,
                                                       default_flow_style=False))
    return True


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
