"""The report of the collective bandwidths and link latencies a prediction used.

The collectives themselves are operators of the step (:mod:`capsim.sim.ops.collectives`), priced on their
links by :func:`capsim.sim.roofline.step_time` with the scenario's per-call link latencies
(:attr:`capsim.scenario.Scenario.ring_call_latency_s`, ``alltoall_call_latency_s``; the built-in links carry
NCCL's per-step hardware latencies, hardware_db/sources: nccl-tuning).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from capsim.scenario import Scenario


def _bw(x: float) -> float | None:
    return None if math.isinf(x) else float(x)


def collectives_report(sc: Scenario) -> dict[str, Any]:
    """The collective bandwidths and link latencies the prediction used (None: that collective is not used)."""
    t = sc.target
    out: dict[str, Any] = {
        "nodes": sc.whole.nodes,
        "tp_allreduce": {"devices_per_ring": sc.tp, "ring_bandwidth_bytes_per_s": _bw(t.ring_bandwidth_bytes_per_s),
                         "link_latency_per_call_s": sc.ring_call_latency_s, "bound_by": t.ring_bottleneck or None},
        "ep_alltoall": {"devices": sc.ep, "bandwidth_bytes_per_s": _bw(t.alltoall_bandwidth_bytes_per_s),
                        "link_latency_per_call_s": sc.alltoall_call_latency_s,
                        "bound_by": t.alltoall_bottleneck or None},
    }
    if sc.pp > 1:
        out["pp_hop"] = {"bandwidth_bytes_per_s": _bw(sc.hop_bytes_per_s), "bound_by": sc.hop_bottleneck or None}
    return out
