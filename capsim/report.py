"""The report of one prediction: per-phase tables, memory, cost, and the message when it does not fit.

:func:`capsim.predict.predict` assembles its JSON from these; :mod:`capsim.sim.metrics` computes the
figures. SI units throughout.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from capsim.sim.cost import LINK
from capsim.sim.roofline import CATEGORIES

if TYPE_CHECKING:
    from capsim.scenario import Scenario


def mean(x) -> float:
    """A headline number: the value, or the mean over replayed batch compositions."""
    return float(x) if not isinstance(x, np.ndarray) or x.ndim == 0 else float(np.mean(x))


def spread(x) -> dict[str, float]:
    p10, p50, p90 = np.percentile(np.asarray(x, float).ravel(), [10, 50, 90])
    return {"p10": float(p10), "p50": float(p50), "p90": float(p90)}


def phase(step, timing, util: dict[str, Any], tokens: float) -> dict[str, Any]:
    """One phase's table: its time, rate, utilisation, bound, and every operator (collectives included)."""
    by_bound = {c: mean(timing.by_category_s[c]) for c in CATEGORIES}
    ops = {}
    for name, op in step.ops.items():
        if op.compute == LINK:
            ops[name] = {"time_s": mean(timing.transfer_s[name]), "bytes": mean(op.link_bytes),
                         "calls": mean(op.calls), "bound": "transfer"}
            continue
        tc, tm = mean(timing.op_compute_s[name]), mean(timing.op_memory_s[name])
        ops[name] = {"time_s": mean(timing.op_s[name]), "flops": mean(op.flops), "bytes": mean(op.bytes),
                     "bound": "compute" if tc > tm else "memory"}
    step_s = mean(timing.step_s)
    return {
        "step_s": step_s, "tokens_per_s": tokens / step_s,
        "s_mbu": mean(util["s_mbu"]), "s_mfu": mean(util["s_mfu"]), "mbu": mean(util["mbu"]), "mfu": mean(util["mfu"]),
        "activated_experts_per_layer": mean(step.activated_experts),
        "bottleneck": CATEGORIES[int(np.argmax([by_bound[c] for c in CATEGORIES]))],
        "time_by_bound_s": by_bound,
        "flops_per_device": mean(util["flops_per_device"]), "bytes_per_device": mean(util["bytes_per_device"]),
        "operators": ops,
    }


def memory(mem, sc: Scenario, residency=None, batch=None) -> dict[str, Any]:
    """Bytes per device, and the offloaded routed experts in DRAM or on the drive. A hybrid model's KV cache
    includes its linear-attention layers' state (``linear_state``: that part, for ``batch`` sequences)."""
    device = {k: mean(getattr(mem, k)) for k in ("weights", "kv_cache", "activations", "reserve", "total", "capacity")}
    if sc.shape.linear_layers and batch is not None:
        from capsim.sim.memory import linear_state_bytes
        from capsim.sim.num import fullest_group

        device["linear_state"] = float(fullest_group(batch, sc.dp) * linear_state_bytes(sc.shape, sc.kv_bytes, sc.tp))
    if math.isinf(device["capacity"]):
        device["capacity"] = None
    off = {"dram": 0.0, "ssd": 0.0}
    if residency is not None:
        off[sc.offload.tier] = mean(residency.host_expert_bytes)
    t = sc.target
    host = {"used": off["dram"], "capacity": t.host_dram_bytes}
    ssd_cap = t.host.ssd_capacity_bytes if t.host else None
    return {"per_device": True, "device": device, "host_dram": host, "ssd": {"used": off["ssd"], "capacity": ssd_cap}}


def offload(sc: Scenario, residency, res) -> dict[str, Any]:
    """The placement and what its misses cost per step, decode and prefill."""
    from capsim import placement

    dec, pre = res.decode_offload, res.prefill_offload
    out = dict(placement.report(sc, residency), decode={
        "device_s": mean(dec.device_s), "offload_s": mean(dec.offload_s),
        "miss_experts_per_layer": mean(dec.miss_experts_per_layer), "miss_bytes": mean(dec.miss_bytes),
        "host_bound": "memory" if bool(np.all(dec.host_bound)) else "compute"},
        prefill={"device_s": mean(pre.device_s), "offload_s": mean(pre.offload_s), "miss_bytes": mean(pre.miss_bytes)})
    if sc.offload.mode == "gpu-fetch":
        for ph in ("decode", "prefill"):
            out[ph].pop("host_bound", None)
    return out


def cost(sc: Scenario, seconds: float, tokens: float) -> dict[str, Any]:
    """USD per hour of the devices used and per 1e6 output tokens (batch x output_len over the request's
    latency): --usd-per-hour, else the CAP cost model with its default assumptions (capsim.cap.hourly: the
    listed cloud price, else capex over the lifetime plus energy; ``capsim cap cost`` shows every part)."""
    q = sc.query
    if q.usd_per_h is not None:
        per_h, basis, detail = q.usd_per_h, "given", "--usd-per-hour"
    elif sc.price_error is not None:
        from capsim.errors import CapsimError

        raise CapsimError(sc.price_error)
    else:
        per_h, basis, detail = sc.price.usd_per_h, sc.price.basis, sc.price.detail
    if per_h is None:
        return {"usd_per_million_output_tokens": None, "usd_per_h": None, "basis": "unpriced",
                "detail": f"{detail}; or pass --usd-per-hour"}
    from capsim.cap.cost import usd_per_million_tokens

    return {"usd_per_million_output_tokens": float(usd_per_million_tokens(per_h, tokens / seconds)), "usd_per_h": per_h,
            "basis": basis, "detail": detail}


def _gb(x: float) -> str:
    return f"{x / 1e9:.1f} GB"


def no_fit_message(sc: Scenario, mem, db) -> str:
    from capsim.fit_advice import suggestions

    t = sc.target
    head = (f"{sc.model_id} ({sc.precision.name}) needs {_gb(mean(mem.total))} per device "
            f"(weights {_gb(mean(mem.weights))}, KV cache {_gb(mean(mem.kv_cache))}, activations "
            f"{_gb(mean(mem.activations))}) but {t.device_id} has {_gb(t.memory_capacity_bytes)}")
    tips = suggestions(sc, db)
    return head + ("; it would fit with " + ", or ".join(tips) if tips else "; nothing tried fits")
