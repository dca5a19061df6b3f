"""The collectives family: what a step sends between devices, as operators with bytes and call counts.

- ``tp_allreduce``: Megatron-style tensor parallelism all-reduces the hidden states
  :data:`ALLREDUCES_PER_LAYER` times per layer (after attention and after the FFN/MoE block); a ring
  all-reduce sends 2 (tp - 1) / tp of the message per device;
- ``ep_dispatch`` / ``ep_combine``: with expert parallelism each device sends its share of the step's tokens'
  top-k copies of the hidden state to the ranks holding their experts, and gets the results back; (ep - 1)
  / ep of them leave the device; one call each per MoE layer; the slowest rank's load scales both;
- ``pp_hop``: between pipeline stages a micro-batch's hidden states cross ``pp - 1`` stage boundaries
  (point to point), one call each.

The roofline (:func:`capsim.sim.roofline.step_time`) prices each on its link: bytes over the link's
bandwidth, plus its calls times the engine's software latency and the link's own latency per call.
"""

from __future__ import annotations

import numpy as np

from capsim.sim.cost import LINK, OpCost
from capsim.sim.num import f, maximum, where
from capsim.sim.ops.base import Local
from capsim.sim.shape import Shape

FAMILY = "collectives"
ALLREDUCES_PER_LAYER = 2  # Megatron-style TP: after attention and after the FFN/MoE block


def _collective(link: str, link_bytes, calls, z) -> OpCost:
    return OpCost(compute=LINK, family=FAMILY, link=link, link_bytes=z + link_bytes, calls=z + calls, rows=z + np.inf)


def collective_ops(s: Shape, w: Local, pp=1, dispatch_bytes_per_element=None) -> dict[str, OpCost]:
    ab, h, tp, ep, z = s.act_bytes, s.hidden, w.tp, w.ep, w.zero
    msg = w.t_g * h * ab  # one all-reduce message: the group's hidden states
    tp_on = tp > 1
    # dispatch (or combine): each device sends its share of the tokens' k copies to the other ranks
    one_way = w.load * (w.all_tokens / w.n) * s.top_k * h * ab * (ep - 1) / ep * s.moe_layers
    # a dispatch in another format (DeepEP's FP8) sends that many bytes per element; the combine stays in ab
    dispatch = one_way if dispatch_bytes_per_element is None else one_way * dispatch_bytes_per_element / ab
    pp = f(pp)
    return {
        "tp_allreduce": _collective("ring", where(tp_on, ALLREDUCES_PER_LAYER * s.layers * 2 * (tp - 1) / tp * msg, 0.0),
                                    where(tp_on, float(ALLREDUCES_PER_LAYER * s.layers), 0.0), z),
        "ep_dispatch": _collective("alltoall", where(w.is_ep, dispatch, 0.0),
                                   where(w.is_ep & (s.num_experts > 0), float(s.moe_layers), 0.0), z),
        "ep_combine": _collective("alltoall", where(w.is_ep, one_way, 0.0),
                                  where(w.is_ep & (s.num_experts > 0), float(s.moe_layers), 0.0), z),
        "pp_hop": _collective("hop", where(pp > 1, (pp - 1) * w.all_tokens * h * ab, 0.0), maximum(pp - 1, 0.0), z),
    }
