"""What would make a scenario fit in device memory: more devices, lower precision, smaller batch, offload.

Each candidate is re-checked with the same memory model the prediction uses;
only changes that fit are suggested.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from capsim import precision
from capsim.errors import CapsimError
from capsim.hardware.db import HardwareDB
from capsim.sim.memory import memory_use
from capsim.sim.shape import shape_of, weight_bytes

if TYPE_CHECKING:
    from capsim.scenario import Scenario

DEVICE_COUNTS = (2, 4, 8, 16, 32, 64)
LOWER_PRECISIONS = ("fp8", "int8", "int4", "nvfp4", "mxfp4", "gguf-q4_k_m", "gguf-q3_k_s")


def _fits(shape, q, target, reserve, tp, ep, n, kv_b, batch=None, chunk=0.0) -> bool:
    m = memory_use(shape, batch=batch or q.batch, input_len=q.input_len, output_len=q.output_len,
                   kv_bytes_per_element=kv_b, capacity_bytes=target.memory_capacity_bytes,
                   reserve_fraction=reserve, tp=tp, ep=ep, n=n, max_batched_tokens=chunk)
    return bool(m.fits)


def _scale_out(db: HardwareDB, hardware_id: str) -> bool:
    try:
        return bool(getattr(db.get(hardware_id), "scale_out_link", None))
    except CapsimError:
        return False


def suggestions(sc: Scenario, db: HardwareDB) -> list[str]:
    out: list[str] = []
    q, t, s, kv_b = sc.query, sc.target, sc.shape, sc.kv_bytes
    reserve, chunk = sc.profile.memory_reserve_fraction, sc.profile.max_batched_tokens
    # 1. more devices (tensor parallel over all of them)
    limit = t.n_available or max(DEVICE_COUNTS)
    for n in DEVICE_COUNTS:
        if n >= t.n_devices and n > sc.tp and _fits(s, q, t, reserve, n, 1, n, kv_b, chunk=chunk):
            nodes = max(getattr(q, "nodes", 1) or 1, 1)
            per_node = t.n_available // nodes if t.n_available else None
            if n <= limit:  # the check splits every weight n ways: tensor parallel over n devices
                out.append(f"--devices {n}" if nodes == 1 else f"--tp {n}")
            elif per_node and n % per_node == 0 and _scale_out(db, t.hardware_id):
                out.append(f"--nodes {n // per_node} --tp {n} (the system has {per_node} devices per node)")
            else:
                out.append(f"--devices {n} (the system has {t.n_available}; no scale-out link to join nodes)")
            break
    # 2. a smaller weight format the device can compute with
    current = sc.precision.bits_per_weight
    for name in LOWER_PRECISIONS:
        p = precision.PRECISIONS[name]
        if p.bits_per_weight >= current:
            continue
        try:
            precision.choose_compute(p, t.peak_flop_per_s, t.device_id)
        except CapsimError:
            continue
        if _fits(shape_of(sc.spec, p), q, t, reserve, sc.tp, sc.ep, t.n_devices, kv_b, chunk=chunk):
            out.append(f"--precision {name}")
            break
    # 3. a smaller batch, when the weights alone fit (an exact search, not a count down from the batch)
    from capsim.capacity import largest_batch

    most = largest_batch(sc, q.input_len, q.output_len)
    if most is not None and 1 <= most < q.batch:
        out.append(f"--batch {most}")
    # 4. routed experts in host DRAM
    routed = weight_bytes(s)["routed_experts"]
    if routed and t.host_dram_bytes and routed <= t.host_dram_bytes:
        no_experts = replace(s, num_experts=0)
        if _fits(no_experts, q, t, reserve, sc.tp, sc.ep, t.n_devices, kv_b, chunk=chunk):
            out.append(f"--offload cpu or --offload gpu-fetch (the routed experts, {routed / 1e9:.0f} GB, in host "
                       f"DRAM of {t.host_dram_bytes / 1e9:.0f} GB)")
    return out

