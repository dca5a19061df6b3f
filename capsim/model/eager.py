"""The per-token tensors an eager transformers forward allocates, by simulator operator.

An eager engine (Hugging Face transformers without compile, on the CPU allocator) writes every
intermediate of a decoder layer to a tensor of its own. Above the allocator's mmap threshold each of them
is mapped afresh every step and faults its pages in on first touch (:func:`capsim.sim.roofline.fresh_page_s`),
so the fresh bytes of a long prefill are set by this inventory, not by the weights.

The list is the transformers 5.x layer code (``MixtralDecoderLayer``, ``OlmoeAttention``,
``DeepseekV2Attention`` / ``DeepseekV3Attention`` and their RMSNorm, rotary, MLP and cache code), checked
against the torch profiler's self allocations of at least 32 MiB in one prefill of 16,384 tokens
(``scripts/alloc_inventory.py``; validation/FAULTS.md lists them op by op):

- RMSNorm (x.pow(2), x * rsqrt(variance), weight * x): 3 tensors of its width;
- each Linear: its output;
- rotary embedding of q and of k (q * cos, cat, rotate_half * sin, add: 4 tensors of the rotated width, and
  rotate_half's -x2: half of it);
- SDPA's output (heads x v_head_dim); MLA: the query concatenation (q_pass, q_rot), expand_kv's new key
  tensor (heads x qk_head_dim);
- the two residual adds of a layer; the MoE block's sum over the top-k (grouped-GEMM experts); the shared
  experts' output added to the routed ones;
- gated FFN (dense layers, shared experts): gate and up outputs, act(gate), act(gate) * up, down's output;
- the router's logits and their softmax (experts wide);
- the embedding lookup (hidden, once) and the final norm (once).

Not listed here: the KV cache's copies (``DynamicLayer.update`` concatenates the new keys and values onto
the cache, in prefill onto an empty one: :func:`capsim.sim.ops.step_costs` lists them for every step), and
what the engine profile decides: the routed experts' per-assignment tensors (``expert_hidden_tensors`` /
``expert_intermediate_tensors``) and a math-path attention's own tensors
(:func:`capsim.sim.roofline.attention_tensors`).

Widths are activation elements per token; every tensor is counted at the activation dtype (transformers'
RMSNorm computes in fp32 and casts back, so for 16-bit activations two of its three tensors are twice as
wide: exact for the fp32 runs this inventory was measured on). ``split`` says whether tensor parallelism
divides the width (heads and intermediate widths) or not (hidden-wide tensors).
"""

from __future__ import annotations

from typing import NamedTuple

from capsim.model.spec import ModelSpec

NORM_TENSORS = 3  # RMSNorm: pow, x * rsqrt, weight * x
ROPE_TENSORS = 4  # apply_rotary_pos_emb: x * cos, cat (rotate_half), rotate_half(x) * sin, add; and -x2 (half)
RESIDUAL_ADDS = 2  # per decoder layer: after attention and after the FFN / MoE block
GATED_FFN_TENSORS = 4  # gate, up, act(gate), act(gate) * up (intermediate wide); down's output is hidden wide
PLAIN_FFN_TENSORS = 2  # up, act(up)
ROUTER_TENSORS = 2  # router logits and their softmax


class Tensors(NamedTuple):
    width: float  # activation elements per token
    count: float  # tensors per step over the whole model
    split: bool = True  # tensor parallelism divides the width


def _rope(width: int, layers: int, split: bool = True) -> list[Tensors]:
    return [Tensors(width, ROPE_TENSORS * layers, split), Tensors(width / 2, layers, split)]


def _attention(spec: ModelSpec) -> list[Tensors]:
    a, h, L = spec.attention, spec.hidden, spec.layers
    out = [Tensors(h, L, False)]  # o_proj's output
    if a.kind == "mla":
        nh, r = a.num_heads, a.qk_rope_head_dim or 0
        q_width = nh * a.head_dim
        if a.q_lora_rank:  # q_a_proj, q_a_layernorm, q_b_proj
            out += [Tensors(a.q_lora_rank, L, False), Tensors(a.q_lora_rank, NORM_TENSORS * L, False)]
        out += [
            Tensors(q_width, L),  # q_proj (or q_b_proj) output
            Tensors(a.kv_lora_rank + r, L, False),  # kv_a_proj_with_mqa output
            Tensors(a.kv_lora_rank, NORM_TENSORS * L, False),  # kv_a_layernorm
            Tensors(nh * (a.head_dim - r + a.v_head_dim), L),  # kv_b_proj output (expand_kv)
            *_rope(nh * r, L), *_rope(r, L, False),  # rotary q_rot, k_rot
            Tensors(q_width, L), Tensors(q_width, L),  # query cat, expand_kv's key tensor
            Tensors(nh * a.v_head_dim, L),  # attention output
        ]
        return out
    q, k, v = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim, a.num_kv_heads * a.v_head_dim
    out += [Tensors(q, L), Tensors(k, L), Tensors(v, L),  # q, k, v projections
            *_rope(q, L), *_rope(k, L),  # rotary embedding
            Tensors(a.num_heads * a.v_head_dim, L)]  # SDPA output
    if a.qk_norm:  # q_norm / k_norm (per head or full width: the same elements)
        out += [Tensors(q, NORM_TENSORS * L), Tensors(k, NORM_TENSORS * L)]
    return out


def _ffn(spec: ModelSpec, intermediate: int, count: float) -> list[Tensors]:
    if not intermediate or not count:
        return []
    inner = GATED_FFN_TENSORS if spec.gated_ffn else PLAIN_FFN_TENSORS
    return [Tensors(intermediate, inner * count), Tensors(spec.hidden, count, False)]


def eager_tensors(spec: ModelSpec) -> dict[str, tuple[Tensors, ...]]:
    """Per simulator operator (:data:`capsim.sim.ops.OPS`), the tensors one eager forward step allocates per
    token (see the module docstring for the list and its source)."""
    h, L, lm = spec.hidden, spec.layers, spec.num_moe_layers
    norms = (2 * L + 1) * NORM_TENSORS  # input and post-attention norm per layer, the final norm once
    moe = lm if spec.num_experts else 0
    shared_add = moe if spec.shared_intermediate else 0
    out = {
        "embedding": (Tensors(h, 1, False),),
        "norms": (Tensors(h, norms + RESIDUAL_ADDS * L, False),),  # and the residual adds
        "attn_proj": tuple(_attention(spec)),
        "router": (Tensors(spec.num_experts, ROUTER_TENSORS * moe, False),) if moe else (),
        "routed_experts": (Tensors(h, moe + shared_add, False),) if moe else (),  # top-k sum (+ shared add)
        "shared_experts": tuple(_ffn(spec, spec.shared_intermediate, moe)),
        "dense_ffn": tuple(_ffn(spec, spec.dense_intermediate, L - lm)),
    }
    return {op: tensors for op, tensors in out.items() if tensors}
