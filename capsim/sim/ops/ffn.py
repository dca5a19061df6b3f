"""The FFN family: shared experts (every token, every MoE layer) and the dense FFN of non-MoE layers."""

from __future__ import annotations

from capsim.sim.cost import OpCost
from capsim.sim.ops.base import KERNELS_PER_LAYER, Local, op
from capsim.sim.shape import Shape

FAMILY = "ffn"


def ffn_ops(s: Shape, w: Local) -> dict[str, OpCost]:
    ab, tp, t_g, lm, ld = s.act_bytes, w.tp, w.t_g, s.moe_layers, s.dense_layers
    return {
        "shared_experts": op(s, w, "shared_experts", FAMILY, 2 * t_g * s.shared_params * lm / tp,
                             s.shared_params * s.ffn_weight_bytes * lm / tp, t_g * s.shared_io_width * ab * lm / tp,
                             KERNELS_PER_LAYER["shared_experts"] * lm if s.shared_params else 0.0, rows=t_g),
        "dense_ffn": op(s, w, "dense_ffn", FAMILY, 2 * t_g * s.dense_params * ld / tp,
                        s.dense_params * s.ffn_weight_bytes * ld / tp, t_g * s.dense_io_width * ab * ld / tp,
                        KERNELS_PER_LAYER["dense_ffn"] * ld, rows=t_g),
    }
