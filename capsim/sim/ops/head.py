"""The head family: what is not a layer's attention or FFN: the embedding lookup, the norms, the LM head.

- norms: :data:`NORM_FLOPS_PER_ELEMENT` FLOPs per element, never compute bound (vector peak);
- the LM head runs on the last position of each sequence only (vLLM, and HF generate with
  logits_to_keep=1).
"""

from __future__ import annotations

from capsim.sim.cost import OpCost
from capsim.sim.ops.base import KERNELS_PER_LAYER, Local, op
from capsim.sim.shape import Shape

FAMILY = "head"
NORM_FLOPS_PER_ELEMENT = 4  # RMSNorm: square, accumulate, scale by rsqrt, multiply by weight


def embedding_op(s: Shape, w: Local) -> OpCost:
    return op(s, w, "embedding", FAMILY, 0.0, w.t_g * s.hidden * (s.embedding_weight_bytes or s.other_weight_bytes) / w.tp,
              w.t_g * s.hidden * s.act_bytes, 1.0, "vector")


def norms_op(s: Shape, w: Local) -> OpCost:
    n_norms = 2 * s.layers + 1  # before attention and before the FFN in each layer, and the final norm
    return op(s, w, "norms", FAMILY, NORM_FLOPS_PER_ELEMENT * w.t_g * s.hidden * n_norms,
              (s.layers * s.norm_params_layer + s.final_norm_params) * s.other_weight_bytes,
              2 * w.t_g * s.hidden * s.act_bytes * n_norms, KERNELS_PER_LAYER["norms"] * s.layers + 1, "vector")


def lm_head_op(s: Shape, w: Local) -> OpCost:
    lm_bytes = (s.embedding_weight_bytes or s.other_weight_bytes) if s.tie_embeddings else s.lm_head_weight_bytes
    return op(s, w, "lm_head", FAMILY, 2 * w.b_g * s.hidden * s.vocab / w.tp, s.hidden * s.vocab * lm_bytes / w.tp,
              w.b_g * (s.hidden + s.vocab) * s.act_bytes / w.tp, 1.0, rows=w.b_g)
