"""A prediction's time on the links between devices: the link latencies of its collective calls, the
report of the collective bandwidths and latencies it used, and pipeline stages' hops (capsim.pipeline).

``r`` is :func:`capsim.predict.resolve`'s scenario, ``q`` the query, ``res`` a request result
(:func:`capsim.sim.request.simulate_request`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from capsim import pipeline
from capsim.sim.ops import ALLREDUCES_PER_LAYER


def _latency_per_call(r: dict[str, Any]) -> tuple[float, float]:
    """Link latency of one TP all-reduce and one EP all-to-all (dispatch or combine) on the topology graph:
    a ring all-reduce (reduce-scatter, then all-gather) takes 2 (tp - 1) steps, each waiting on the slowest
    ring hop's route; an all-to-all's messages travel at once, so it waits once on the longest route."""
    t, tp, ep = r["target"], r["tp"], r["ep"]
    return (2 * (tp - 1) * t.ring_latency_s if tp > 1 else 0.0,
            t.alltoall_latency_s if ep > 1 and r["shape"].num_experts else 0.0)


def link_latency_s(r: dict[str, Any]) -> dict[str, float]:
    """Seconds a step (prefill or decode) waits on link latencies, per collective: its calls x the latency per
    call, exposed as the engine exposes collectives (1 - transfer_overlap)."""
    s, prof = r["shape"], r["profile"]
    ar_call, a2a_call = _latency_per_call(r)
    exposed = 1.0 - prof.transfer_overlap
    return {"tp_allreduce": ALLREDUCES_PER_LAYER * s.layers * ar_call * exposed,
            "ep_alltoall": 2 * s.moe_layers * a2a_call * exposed}


def with_link_latency(res, r: dict[str, Any], q):
    """Each step plus the link latencies of its collective calls (link_latency_s); the engine profile's
    collective_latency_s (software) is already in the step. The built-in links carry NCCL's per-step hardware
    latencies (hardware_db/sources: nccl-tuning)."""
    extra = link_latency_s(r)
    total = sum(extra.values())
    if total == 0:
        return res

    def bump(tm):
        return replace(tm, step_s=tm.step_s + total,
                       transfer_s={k: v + extra.get(k, 0.0) for k, v in tm.transfer_s.items()},
                       by_category_s=dict(tm.by_category_s, transfer=tm.by_category_s["transfer"] + total))

    pre, dec = bump(res.prefill_timing), bump(res.decode_timing)
    o = np.asarray(q.output_len, float)
    return replace(res, prefill_timing=pre, decode_timing=dec, ttft_s=pre.step_s, tpot_s=dec.step_s,
                   request_s=pre.step_s + np.maximum(o - 1, 0) * dec.step_s)


def collectives_report(r: dict[str, Any], q) -> dict[str, Any]:
    """The collective bandwidths and link latencies the prediction used (None: that collective is not used)."""
    t = r["target"]
    ar_call, a2a_call = _latency_per_call(r)

    def bw(x: float) -> float | None:
        return None if math.isinf(x) else float(x)

    out: dict[str, Any] = {
        "nodes": r["whole_target"].nodes,
        "tp_allreduce": {"devices_per_ring": r["tp"], "ring_bandwidth_bytes_per_s": bw(t.ring_bandwidth_bytes_per_s),
                         "link_latency_per_call_s": ar_call, "bound_by": t.ring_bottleneck or None},
        "ep_alltoall": {"devices": r["ep"], "bandwidth_bytes_per_s": bw(t.alltoall_bandwidth_bytes_per_s),
                        "link_latency_per_call_s": a2a_call, "bound_by": t.alltoall_bottleneck or None},
    }
    if q.pp > 1:
        out["pp_hop"] = {"bandwidth_bytes_per_s": bw(r["hop_bytes_per_s"]), "bound_by": r["hop_bottleneck"] or None}
    return out


def pipelined(res, r: dict[str, Any], q, mb: int):
    """Micro-batches streaming through ``q.pp`` stages (capsim.pipeline)."""
    s, pp, link = r["shape"], q.pp, r["hop_bytes_per_s"]
    tpot = res.tpot_s + pipeline.hop_seconds(mb, s.hidden, s.act_bytes, link, pp)
    ttft = pipeline.prefill_seconds(res.ttft_s, pp) + pipeline.hop_seconds(mb * q.input_len, s.hidden, s.act_bytes,
                                                                          link, pp)
    o = np.asarray(q.output_len, float)
    return replace(res, ttft_s=ttft, tpot_s=tpot, request_s=ttft + np.maximum(o - 1, 0) * tpot,
                   prefill_timing=replace(res.prefill_timing, step_s=ttft),
                   decode_timing=replace(res.decode_timing, step_s=tpot))
