"""FLOPs and bytes of one step (a prefill pass or one decode iteration of a batch), per operator, per device.

Pure functions over numpy arrays: every argument except the Shape may be an
array of scenarios and the results broadcast. Counts are for ONE device of a
group of ``n`` identical devices: attention and dense weights split ``tp`` ways
(``dp = n / tp`` data-parallel replicas of the attention, each with its share of
the sequences); routed experts follow the attention tensor parallelism when
``ep == 1`` and are spread whole over all devices when ``ep == n``.

Conventions (each a choice stated once):
- a matmul of T tokens with a K x N weight costs 2 T K N FLOPs and reads the
  weight once per step, plus T (K + N) activation elements;
- routed-expert weights are read once per step per ACTIVATED expert
  (:mod:`capsim.sim.experts`), FLOPs are per token x top-k;
- attention scores cost 2 x heads x (d_qk + d_v) FLOPs per (query, key) pair and
  read each cached key/value once per step (an ideal single-pass fused kernel);
- the LM head runs on the last position of each sequence only (vLLM, and HF
  generate with logits_to_keep=1);
- norms: :data:`NORM_FLOPS_PER_ELEMENT` FLOPs per element, never compute bound;
- each matmul records its ``rows`` (M, the tokens one weight multiplies) and its weight matrices'
  shapes as one device holds them (:mod:`capsim.model.gemms`; tensor parallelism splits a matrix's
  columns or rows): a GEMM's efficiency depends on both (:mod:`capsim.sim.roofline`);
- MLA decode is absorbed (attention over the cached latent) unless the engine
  expands it: transformers' DeepseekV2/V3 attention (``expand_kv``) runs kv_b_proj
  over EVERY cached latent each step and attends per head (op ``mla_expand``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from capsim.model.gemms import Gemm
from capsim.sim.experts import expected_activated
from capsim.sim.shape import Shape

NORM_FLOPS_PER_ELEMENT = 4  # RMSNorm: square, accumulate, scale by rsqrt, multiply by weight
# Kernel launches per layer (per step for embedding and LM head) of a fused engine; the engine
# profile's per-kernel overhead multiplies these. Fused QKV + output projection; one attention kernel;
# fused-MoE: one grouped GEMM for gate/up, one for down; router GEMM + top-k.
KERNELS_PER_LAYER = {
    "attn_proj": 2, "attn_scores": 1, "norms": 2, "router": 2,
    "routed_experts": 2, "shared_experts": 2, "dense_ffn": 2,
    # expand_kv: kv_b_proj, transpose/split, new_empty + two copy_ into the key tensor
    "mla_expand": 4,
}
OPS = ("embedding", "attn_proj", "mla_expand", "attn_scores", "norms", "router", "routed_experts",
       "shared_experts", "dense_ffn", "lm_head")
ALLREDUCES_PER_LAYER = 2  # Megatron-style TP: after attention and after the FFN/MoE block


@dataclass(frozen=True)
class OpCost:
    flops: np.ndarray
    weight_bytes: np.ndarray
    kv_bytes: np.ndarray
    act_bytes: np.ndarray
    kernels: np.ndarray
    compute: str  # which peak: "matmul", "attention" or "vector"
    activated_per_layer: np.ndarray | float = 0.0  # routed experts only: activated experts summed over MoE layers
    rows: np.ndarray | float = np.inf  # matmuls: rows (tokens) each weight multiplies; inf for non-GEMM work
    # matmuls: (K, N, share of the op's FLOPs) of each weight matrix as one device holds it
    gemms: tuple[tuple[np.ndarray | float, np.ndarray | float, float], ...] = ()
    # Tensors the step allocates, ((bytes of one tensor, how many), ...): those above the allocator's mmap
    # threshold are fresh pages each step (:mod:`capsim.sim.roofline`). A cache grown by concatenation (and
    # expanded MLA) only; other activations are in eager_allocs.
    allocs: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    # ... the per-token tensors an eager forward writes (:mod:`capsim.model.eager`), in the same form: priced
    # only for an engine that writes each intermediate to a tensor of its own (engine profile: eager_layer_tensors)
    eager_allocs: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    # Routed experts only: bytes of one tensor one hidden-width (and one intermediate-width) element wide per
    # token-expert assignment, over one MoE layer's assignments on the device, and the MoE layers: what an
    # unfused engine's per-assignment tensors weigh (engine profile: expert_hidden/intermediate_tensors).
    assignment_tensor_bytes: tuple[np.ndarray | float, np.ndarray | float] = (0.0, 0.0)
    moe_layers: float = 0.0
    # Attention only: bytes of one (query, key) score tensor and of one key tensor (heads x qk per cached and new
    # token) per layer over the device's sequences, whether the query/key head dim differs from the value's,
    # and the layers: what an attention that materialises its scores allocates (engine profile:
    # math_attention_unequal_head_dims).
    score_tensor_bytes: np.ndarray | float = 0.0
    key_tensor_bytes: np.ndarray | float = 0.0
    # ... and per layer the bytes of one query-wide (heads x qk per new token) and one output-wide (heads x v per
    # new token) tensor
    query_tensor_bytes: np.ndarray | float = 0.0
    output_tensor_bytes: np.ndarray | float = 0.0
    # ... and the elements of that score matrix per layer, and the FLOPs of computing it whole (every query
    # against every key of its sequence: a materialising attention does not skip the causally masked half)
    score_elements: np.ndarray | float = 0.0
    materialised_flops: np.ndarray | float = 0.0
    head_dims_differ: bool = False
    layers: float = 0.0

    @property
    def bytes(self) -> np.ndarray:
        return self.weight_bytes + self.kv_bytes + self.act_bytes


@dataclass(frozen=True)
class Step:
    ops: dict[str, OpCost]
    transfer_bytes: dict[str, np.ndarray]  # per device, by collective
    activated_experts: np.ndarray  # distinct routed experts per MoE layer, over the tokens one expert group sees
    all_expert_weight_bytes: np.ndarray  # per device, if every expert were read (for dense MBU)
    all_expert_flops: np.ndarray  # per device, if every token ran every expert (for dense MFU)


def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=float)


def _on_device(gemms: tuple[Gemm, ...], split) -> tuple[tuple[np.ndarray | float, np.ndarray | float, float], ...]:
    """(K, N, FLOP share) of each matrix when tensor parallelism splits it ``split`` ways (rows of a
    row-parallel matrix, columns of the others)."""
    total = float(sum(g.k * g.n for g in gemms))
    return tuple((g.k / split if g.row_parallel else float(g.k), float(g.n) if g.row_parallel else g.n / split,
                  g.k * g.n / total) for g in gemms)


def step_costs(
    s: Shape,
    *,
    tokens,
    seqs,
    pairs,
    kv_read_tokens,
    decode: bool,
    kv_bytes_per_element,
    tp=1,
    ep=1,
    n=1,
    activated=None,
    rank_activated=None,
    rank_load=1.0,
    mla_absorbed=True,
) -> Step:
    """Per-device costs of one step.

    tokens: tokens processed in the step (all sequences); seqs: sequences in the batch;
    pairs: attention (query, key) pairs per layer over all sequences; kv_read_tokens: cached
    tokens whose K/V (or latent) are read per layer over all sequences.
    Routing (default: uniform, :func:`expected_activated`; a trace replay passes measured values,
    each averaged over MoE layers): ``activated``, distinct experts the tokens of one expert group
    touch per layer; ``rank_activated``, distinct experts on the slowest EP rank per layer;
    ``rank_load``, the slowest EP rank's expert-token assignments over the mean rank's (1 = balanced).
    ``mla_absorbed`` (engine property): False when MLA decode re-expands the cached latents each step.
    """
    tp, ep, n = _f(tp), _f(ep), _f(n)
    dp = n / tp
    # The busiest data-parallel group sets the step: it holds ceil(B / dp) of the B sequences.
    b_g = np.ceil(_f(seqs) / dp - 1e-9)
    share = b_g / _f(seqs)
    t_g, pairs_g, kv_g = _f(tokens) * share, _f(pairs) * share, _f(kv_read_tokens) * share
    ab, L, h = s.act_bytes, s.layers, s.hidden
    zero = np.zeros(np.broadcast(t_g, tp, ep).shape)
    ops: dict[str, OpCost] = {}

    def put(name, flops, wbytes, act, kernels, compute="matmul", kv=0.0, rows=np.inf, split=None):
        gemms = _on_device(s.gemms_of(name), tp if split is None else split) if compute == "matmul" else ()
        ops[name] = OpCost(zero + flops, zero + wbytes, zero + kv, zero + act, zero + kernels, compute,
                           rows=zero + rows, gemms=gemms)

    put("embedding", 0.0, t_g * h * s.other_weight_bytes / tp, t_g * h * ab, 1.0, "vector")
    put("attn_proj", 2 * t_g * s.attn_params * L / tp, L * s.attn_params * s.attn_weight_bytes / tp,
        t_g * s.attn_io_width * ab * L / tp, KERNELS_PER_LAYER["attn_proj"] * L, rows=t_g)
    expand = bool(s.mla and decode and not mla_absorbed)
    qk, v = (s.qk_dim_decode, s.v_dim_decode) if decode and not expand else (s.qk_dim_prefill, s.v_dim_prefill)
    kv_frac = 1.0 if s.mla else np.ceil(s.num_kv_heads / tp) / s.num_kv_heads  # MLA latent: replicated over TP
    kv_elems = s.kv_elements_per_token_layer * L * kv_frac * _f(kv_bytes_per_element)
    # Expanded MLA decode: kv_b_proj over every cached latent (a GEMM, 2 x latent x up_width FLOPs per cached
    # token, reading the latent and writing the per-head K_nope|V, up_width elements); then copies of K_nope
    # and the rope part into a new key tensor (read heads x nope, write heads x qk) and attention over the
    # per-head K and V instead of the latent: those element moves are counted with the attention.
    nope = s.mla_up_width / s.heads - s.v_dim_prefill if s.mla else 0.0  # qk_nope_head_dim
    put("mla_expand", 2 * kv_g * s.mla_latent * s.mla_up_width * L / tp if expand else 0.0, 0.0,
        kv_g * (s.mla_latent + s.mla_up_width) * ab * L / tp if expand else 0.0,
        KERNELS_PER_LAYER["mla_expand"] * L if expand else 0.0, rows=kv_g / b_g)
    expanded_kv_act = kv_g * s.heads * (nope + 2 * qk + v) * ab * L / tp if expand else 0.0
    put("attn_scores", 2 * pairs_g * s.heads * (qk + v) * L / tp, 0.0,
        t_g * s.heads * (qk + v) * ab * L / tp + expanded_kv_act,
        KERNELS_PER_LAYER["attn_scores"] * L, "attention", kv=(kv_g + t_g) * kv_elems)  # read cache + write new
    heads_dev = s.heads / tp
    scores = heads_dev * t_g * (kv_g + t_g) / b_g  # every query of a sequence against every key of it
    ops["attn_scores"] = replace(
        ops["attn_scores"], layers=float(L), head_dims_differ=bool(qk != v),
        score_tensor_bytes=scores * ab + zero, score_elements=scores + zero,
        materialised_flops=2 * scores * (qk + v) * L + zero,
        key_tensor_bytes=heads_dev * (kv_g + t_g) * qk * ab + zero,
        query_tensor_bytes=heads_dev * t_g * qk * ab + zero, output_tensor_bytes=heads_dev * t_g * v * ab + zero)
    # A cache grown by torch.cat allocates each layer's cache tensors anew every step (in prefill, the
    # concatenation onto an empty cache copies the new tokens): K and V (MHA/GQA: half the cached elements
    # each) or the latent and its rope part (MLA); expanded MLA decode also allocates kv_b_proj's output
    # (up_width per cached token) and the new key tensor (heads x qk per cached token).
    cached = (kv_g + t_g) * _f(kv_bytes_per_element) * kv_frac
    per_tok = s.kv_elements_per_token_layer
    cache = (((cached * s.mla_latent, L + zero), (cached * (per_tok - s.mla_latent), L + zero)) if s.mla
             else ((cached * per_tok / 2, 2 * L + zero),))
    ops["attn_scores"] = replace(ops["attn_scores"], allocs=cache)
    if decode:
        if expand:
            ops["mla_expand"] = replace(ops["mla_expand"], allocs=(
                (kv_g / tp * s.mla_up_width * ab, L + zero), (kv_g / tp * s.heads * qk * ab, L + zero)))
    n_norms = 2 * L + 1
    put("norms", NORM_FLOPS_PER_ELEMENT * t_g * h * n_norms,
        (L * s.norm_params_layer + s.final_norm_params) * s.other_weight_bytes, 2 * t_g * h * ab * n_norms,
        KERNELS_PER_LAYER["norms"] * L + 1, "vector")
    lm, e, k = s.moe_layers, s.num_experts, s.top_k
    put("router", 2 * t_g * h * e * lm, s.router_params * s.other_weight_bytes * lm, t_g * (h + e) * ab * lm,
        KERNELS_PER_LAYER["router"] * lm if e else 0.0, rows=t_g, split=1.0)
    expert_bytes = s.expert_params * s.expert_weight_bytes * lm
    expert_flops_token = 2 * s.expert_params * lm
    if np.any((ep > 1) & (ep != n)):
        raise ValueError("ep must be 1 or equal to the number of devices")
    all_tokens = _f(tokens)
    is_ep = ep > 1
    if activated is None:  # ep == 1: each TP group sees its own tokens; ep == n: every expert sees the step
        activated = np.where(is_ep, expected_activated(e, k, all_tokens), expected_activated(e, k, t_g))
    activated = _f(activated)
    on_rank = activated / ep if rank_activated is None else _f(rank_activated)
    load = np.where(is_ep, _f(rank_load), 1.0)
    routed_w = np.where(is_ep, on_rank * expert_bytes, activated * expert_bytes / tp)
    all_w = np.where(is_ep, e / ep * expert_bytes, e * expert_bytes / tp)
    on_device = np.where(is_ep, on_rank, activated)
    with np.errstate(divide="ignore", invalid="ignore"):  # rows per activated expert: its token assignments
        expert_rows = np.where(on_device > 0, load * t_g * k / np.maximum(on_device, 1e-300), np.inf)
    put("routed_experts", load * t_g * k * expert_flops_token / tp, routed_w,
        load * t_g * k * s.expert_io_width * ab * lm / tp, KERNELS_PER_LAYER["routed_experts"] * lm if e else 0.0,
        rows=expert_rows, split=np.where(is_ep, 1.0, tp))
    assignments = load * t_g * k  # token-expert pairs the device runs per MoE layer
    ops["routed_experts"] = replace(ops["routed_experts"], activated_per_layer=on_device * lm,
                                    assignment_tensor_bytes=(assignments * h * ab + zero,
                                                             assignments * s.expert_intermediate * ab
                                                             / np.where(is_ep, 1.0, tp) + zero),
                                    moe_layers=float(lm))
    put("shared_experts", 2 * t_g * s.shared_params * lm / tp, s.shared_params * s.ffn_weight_bytes * lm / tp,
        t_g * s.shared_io_width * ab * lm / tp, KERNELS_PER_LAYER["shared_experts"] * lm if s.shared_params else 0.0,
        rows=t_g)
    ld = s.dense_layers
    put("dense_ffn", 2 * t_g * s.dense_params * ld / tp, s.dense_params * s.ffn_weight_bytes * ld / tp,
        t_g * s.dense_io_width * ab * ld / tp, KERNELS_PER_LAYER["dense_ffn"] * ld, rows=t_g)
    lm_bytes = s.other_weight_bytes if s.tie_embeddings else s.lm_head_weight_bytes
    put("lm_head", 2 * b_g * h * s.vocab / tp, h * s.vocab * lm_bytes / tp, b_g * (h + s.vocab) * ab / tp, 1.0,
        rows=b_g)

    for name, op in ops.items():  # the eager forward's per-token tensors, per device
        eager = tuple((t_g * w.width * ab / (tp if w.split else 1.0), w.count + zero) for w in s.eager_of(name))
        if eager:
            ops[name] = replace(op, eager_allocs=eager)

    msg = t_g * h * ab  # one all-reduce message: the group's hidden states
    transfers = {
        "tp_allreduce": np.where(tp > 1, ALLREDUCES_PER_LAYER * L * 2 * (tp - 1) / tp * msg, 0.0) + zero,
        # dispatch + combine: each device sends its share of tokens' k copies to the other ranks
        "ep_alltoall": np.where(is_ep, 2 * load * (all_tokens / n) * k * h * ab * (ep - 1) / ep * lm, 0.0) + zero,
    }
    all_flops = t_g * e * expert_flops_token / tp
    return Step(ops, transfers, zero + activated, zero + all_w, zero + all_flops)
