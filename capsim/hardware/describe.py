"""Summaries of hardware items for people (scaled units) and for JSON (SI values)."""

from __future__ import annotations

import math

from capsim.hardware.db import HardwareDB, iter_quantities
from capsim.hardware.quantity import Quantity
from capsim.hardware.schema import Accelerator, Cpu, Item, Link, Memory, Storage, System
from capsim.hardware.topology import alltoall_bandwidth, build_graph, devices, path, ring_bandwidth
from capsim.units import format_quantity

# Field-name suffix -> dimension, to print SI values with their unit.
_SUFFIX_DIM = (
    ("_bytes_per_s", "B/s"),
    ("_flop_per_s", "FLOP/s"),
    ("_transfers_per_s", "T/s"),
    ("_usd_per_h", "USD/h"),
    ("_iops", "IO/s"),
    ("_bytes", "B"),
    ("_usd", "USD"),
    ("_hz", "Hz"),
    ("_w", "W"),
    ("_s", "s"),
)


def dimension_of(field_path: str) -> str:
    parts = field_path.split(".")
    for part in reversed(parts):
        for suffix, dim in _SUFFIX_DIM:
            if part.endswith(suffix):
                return dim
    return "1"


def show(q: Quantity, field_path: str) -> str:
    dim = dimension_of(field_path)
    return format_quantity(q.value, dim, binary=False)


def key_figures(item: Item, db: HardwareDB) -> dict[str, float]:
    """A few SI figures that characterise an item (used by 'hw list')."""
    if isinstance(item, Accelerator):
        out = {
            "memory_capacity_bytes": item.memory.capacity_bytes.value,
            "memory_bandwidth_bytes_per_s": item.memory.bandwidth_bytes_per_s.value,
        }
        for dt in ("bf16", "fp16", "fp32"):
            if dt in item.peak_flop_per_s:
                out[f"peak_{dt}_flop_per_s"] = item.peak_flop_per_s[dt].value
                break
        return out
    if isinstance(item, Cpu):
        return {"cores": item.cores.value, "memory_bandwidth_bytes_per_s": item.memory_bandwidth_bytes_per_s.value}
    if isinstance(item, Memory):
        return {"bandwidth_per_channel_bytes_per_s": item.bandwidth_per_channel_bytes_per_s.value}
    if isinstance(item, Link):
        return {"bandwidth_per_direction_bytes_per_s": item.bandwidth_per_direction_bytes_per_s.value}
    if isinstance(item, Storage):
        return {"sequential_read_bytes_per_s": item.sequential_read_bytes_per_s.value}
    if isinstance(item, System):
        return system_summary(item, db)
    return {}


def system_summary(system: System, db: HardwareDB) -> dict[str, float]:
    """Totals and topology answers for a system, in SI units."""
    g = build_graph(system, db)
    accs = devices(g, "accelerator")
    out: dict[str, float] = {"accelerators": float(len(accs))}
    drams = devices(g, "dram")
    for key, nodes in (("accelerator_memory_bytes", accs), ("dram_bytes", drams)):
        caps = [g.nodes[n]["capacity_bytes"] for n in nodes]
        if caps and None not in caps:  # unknown capacity is left out, never shown as 0 B
            out[key] = sum(caps)
    if drams:
        out["dram_bandwidth_bytes_per_s"] = sum(g.nodes[n]["bandwidth_bytes_per_s"] for n in drams)
    if len(accs) > 1:
        out["ring_bandwidth_bytes_per_s"] = ring_bandwidth(g, accs)
        out["alltoall_bandwidth_bytes_per_s"] = alltoall_bandwidth(g, accs)
    if accs and drams:
        out["dram_to_accelerator_bytes_per_s"] = path(g, drams[0], accs[0]).bandwidth_bytes_per_s
    storage = devices(g, "storage")
    if accs and storage:
        via = (drams[0],) if drams else ()
        out["storage_to_accelerator_bytes_per_s"] = path(g, storage[0], accs[0], via).bandwidth_bytes_per_s
    return {k: v for k, v in out.items() if not math.isinf(v)}


def brief(figures: dict[str, float]) -> str:
    """One line of key figures, scaled for reading."""
    parts = []
    for key, value in figures.items():
        dim = dimension_of(key)
        label = key.removesuffix("_bytes_per_s").removesuffix("_flop_per_s").removesuffix("_bytes")
        parts.append(f"{label.replace('_', ' ')} {format_quantity(value, dim)}")
    return ", ".join(parts)


def quantity_rows(item: Item) -> list[tuple[str, str, Quantity]]:
    return [(p, show(q, p), q) for p, q in iter_quantities(item)]
