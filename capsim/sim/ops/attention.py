"""The attention family: projections, MLA's latent re-expansion, and the scores over the KV cache.

- a projection of T tokens with a K x N weight costs 2 T K N FLOPs and reads the weight once per step, plus
  T (K + N) activation elements (the model's attention io width);
- attention scores cost 2 x heads x (d_qk + d_v) FLOPs per (query, key) pair and read each cached key/value
  once per step (an ideal single-pass fused kernel), then write the new tokens' entries;
- a Gated DeltaNet linear-attention layer (hybrid models) costs its recurrence's FLOPs per token and reads and
  writes each sequence's fixed state once per step (in the attention-scores operator: it is the token mixer);
- DeepSeek-V3.2's sparse attention: the attention attends to its top-k keys per query (the pairs counted), and
  its indexer scores every (query, key) pair of full causal attention, 2 x index heads x index dim FLOPs each,
  reading each sequence's cached index keys once per decode step;
- MLA decode is absorbed (attention over the cached latent) unless the engine expands it: transformers'
  DeepseekV2/V3 attention (``expand_kv``) runs kv_b_proj over EVERY cached latent each step and attends per
  head (op ``mla_expand``).
"""

from __future__ import annotations

from capsim.sim.cost import OpCost
from capsim.sim.ops.base import KERNELS_PER_LAYER, Local, op
from capsim.sim.shape import Shape

FAMILY = "attention"


def attention_ops(s: Shape, w: Local) -> dict[str, OpCost]:
    ab, L, tp, t_g, kv_g = s.act_bytes, s.layers, w.tp, w.t_g, w.kv_g
    out = {"attn_proj": op(s, w, "attn_proj", FAMILY, 2 * t_g * s.attn_params * L / tp,
                           L * s.attn_params * s.attn_weight_bytes / tp, t_g * s.attn_io_width * ab * L / tp,
                           KERNELS_PER_LAYER["attn_proj"] * L, rows=t_g)}
    kv_elems = s.kv_elements_per_token_layer * L * w.kv_frac * w.kv_bytes_per_element
    # Expanded MLA decode: kv_b_proj over every cached latent (a GEMM, 2 x latent x up_width FLOPs per cached
    # token, reading the latent and writing the per-head K_nope|V, up_width elements); then copies of K_nope
    # and the rope part into a new key tensor (read heads x nope, write heads x qk) and attention over the
    # per-head K and V instead of the latent: those element moves are counted with the attention.
    nope = s.mla_up_width / s.heads - s.v_dim_prefill if s.mla else 0.0  # qk_nope_head_dim
    e = w.expand
    out["mla_expand"] = op(s, w, "mla_expand", FAMILY, 2 * kv_g * s.mla_latent * s.mla_up_width * L / tp if e else 0.0,
                           0.0, kv_g * (s.mla_latent + s.mla_up_width) * ab * L / tp if e else 0.0,
                           KERNELS_PER_LAYER["mla_expand"] * L if e else 0.0, rows=kv_g / w.b_g)
    expanded_kv_act = kv_g * s.heads * (nope + 2 * w.qk + w.v) * ab * L / tp if e else 0.0
    n_lin = s.linear_layers
    lin_flops = t_g * s.linear_flops_per_token * n_lin / tp
    lin_state = 2 * w.b_g * s.linear_state_elements * n_lin * w.kv_bytes_per_element / tp  # read + write
    idx_flops = 2 * w.dense_pairs_g * s.indexer_heads * s.indexer_dim * L / tp  # replicated keys, split heads
    idx_keys = (w.dense_pairs_g if w.decode else 0.0) * s.indexer_dim * L * w.kv_bytes_per_element
    lin_state = lin_state + idx_keys
    out["attn_scores"] = op(s, w, "attn_scores", FAMILY,
                            2 * w.pairs_g * s.heads * (w.qk + w.v) * L / tp + lin_flops + idx_flops,
                            0.0, t_g * s.heads * (w.qk + w.v) * ab * L / tp + expanded_kv_act,
                            KERNELS_PER_LAYER["attn_scores"] * L, "attention",
                            kv=(kv_g + t_g) * kv_elems + lin_state)  # read the cache + write the new tokens
    return out
