"""The routed-experts family: the router and the experts a step activates.

Routed-expert weights are read once per step per ACTIVATED expert (:mod:`capsim.sim.experts`: uniform
routing when no measured routing is given), FLOPs are per token x top-k. With expert parallelism (ep == n)
every expert sees the whole step's tokens and the slowest rank (its activated experts, its share of the
assignments: ``rank_load`` over the mean) sets the step: measured by a replayed trace, or under uniform
routing the expected busiest rank (:func:`capsim.sim.experts.busiest_rank`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from capsim.sim.cost import OpCost
from capsim.sim.experts import busiest_rank, expected_activated
from capsim.sim.num import f, maximum, where
from capsim.sim.ops.base import KERNELS_PER_LAYER, Local, op
from capsim.sim.shape import Shape

FAMILY = "experts"


def expert_ops(s: Shape, w: Local, activated=None, rank_activated=None, rank_load=1.0
               ) -> tuple[dict[str, OpCost], Local, dict[str, np.ndarray]]:
    """The router and routed-experts operators; ``w`` with the device's load and assignments; and the dense
    figures (every expert read, every token through every expert) and activated experts per layer."""
    ab, h, tp, t_g, is_ep = s.act_bytes, s.hidden, w.tp, w.t_g, w.is_ep
    lm, e, k = s.moe_layers, s.num_experts, s.top_k
    out = {"router": op(s, w, "router", FAMILY, 2 * t_g * h * e * lm, s.router_params * s.other_weight_bytes * lm,
                        t_g * (h + e) * ab * lm, KERNELS_PER_LAYER["router"] * lm if e else 0.0, rows=t_g, split=1.0)}
    expert_bytes = s.expert_params * s.expert_weight_bytes * lm
    expert_flops_token = 2 * s.expert_params * lm
    if activated is None:  # ep == 1: each TP group sees its own tokens; ep == n: every expert sees the step
        activated = where(is_ep, expected_activated(e, k, w.all_tokens), expected_activated(e, k, t_g))
    activated = f(activated)
    if rank_activated is None:  # uniform routing: the busiest of the EP ranks, not the mean one
        on_rank, busy_load = busiest_rank(e, k, w.all_tokens, w.ep)
        on_rank, rank_load = f(on_rank), f(busy_load)
    else:
        on_rank = f(rank_activated)
    load = where(is_ep, f(rank_load), 1.0)
    # tokens whose experts this device runs: its TP group's (ep == 1), or under expert parallelism its share of
    # every group's tokens (the busiest rank's excess is ``load``), not the busiest attention group's
    t_g = where(is_ep, w.all_tokens * tp / w.n, t_g)
    routed_w = where(is_ep, on_rank * expert_bytes, activated * expert_bytes / tp)
    all_w = where(is_ep, e / w.ep * expert_bytes, e * expert_bytes / tp)
    on_device = where(is_ep, on_rank, activated)
    # rows per activated expert: its token assignments
    expert_rows = where(on_device > 0, load * t_g * k / maximum(on_device, 1e-300), np.inf)
    out["routed_experts"] = op(
        s, w, "routed_experts", FAMILY, load * t_g * k * expert_flops_token / tp, routed_w,
        load * t_g * k * s.expert_io_width * ab * lm / tp, KERNELS_PER_LAYER["routed_experts"] * lm if e else 0.0,
        rows=expert_rows, split=where(is_ep, 1.0, tp), activated_per_layer=on_device * lm)
    dense = {"activated": w.zero + activated, "all_weight_bytes": w.zero + all_w,
             "all_flops": w.zero + t_g * e * expert_flops_token / tp}
    return out, replace(w, load=load, assignments=load * t_g * k), dense
