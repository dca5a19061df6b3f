"""The weight matrices a model multiplies, by component, as (K in, N out) shapes.

A GEMM's efficiency at few rows depends on its weight's shape, not only its size (the probe's measured
curves, :mod:`capsim.measure.probe_gemm`), so the simulator needs each component's matrices. The layout is
the Hugging Face transformers modelling code's (5.x), which the CPU validation runs:

- attention (GQA/MHA): q_proj, k_proj, v_proj, o_proj, separate (``MixtralAttention``, ``OlmoeAttention``);
- attention (MLA): q_proj (or q_a_proj and q_b_proj with a q LoRA rank), kv_a_proj_with_mqa, kv_b_proj,
  o_proj (``DeepseekV2Attention`` / ``DeepseekV3Attention``);
- routed experts: one fused gate_up matrix (hidden -> 2 x intermediate) and down (``MixtralExperts`` and the
  other families' experts modules hold ``gate_up_proj`` as one (experts, 2 x intermediate, hidden) tensor; a
  non-gated expert has up and down);
- dense FFN and shared experts: gate_proj, up_proj, down_proj, separate (``MixtralMLP``-style modules);
- router (hidden -> experts) and LM head (hidden -> vocabulary).

Each matrix says whether tensor parallelism splits its rows (K: row-parallel, o_proj / down) or its
columns (N: column-parallel, everything else), as Megatron-LM does (Shoeybi et al., arXiv:1909.08053 §3).
Fused engines (vLLM, TensorRT-LLM) merge q/k/v and gate/up further; only engine profiles with measured
curves use the shapes, and their FLOPs and bytes are the same either way.
"""

from __future__ import annotations

from typing import NamedTuple

from capsim.model.spec import Attention, ModelSpec


class Gemm(NamedTuple):
    k: int  # in features
    n: int  # out features
    row_parallel: bool = False  # tensor parallelism splits K (True) or N (False)


def attention_gemms(a: Attention, hidden: int) -> tuple[Gemm, ...]:
    h, nh = hidden, a.num_heads
    if a.kind == "mla":
        q_out = nh * a.head_dim
        q = (Gemm(h, q_out),) if not a.q_lora_rank else (Gemm(h, a.q_lora_rank), Gemm(a.q_lora_rank, q_out))
        up = nh * (a.head_dim - a.qk_rope_head_dim + a.v_head_dim)
        return (*q, Gemm(h, a.kv_lora_rank + a.qk_rope_head_dim), Gemm(a.kv_lora_rank, up),
                Gemm(nh * a.v_head_dim, h, True))
    kv = a.num_kv_heads * a.head_dim
    return (Gemm(h, nh * a.head_dim * (2 if a.output_gate else 1)), Gemm(h, kv), Gemm(h, a.num_kv_heads * a.v_head_dim),
            Gemm(nh * a.v_head_dim, h, True))


def indexer_gemms(spec: ModelSpec) -> tuple[Gemm, ...]:
    """DeepSeek-V3.2's indexer (DeepseekV32Indexer): wq_b over the query latent, wk and weights_proj over the hidden."""
    ix = spec.indexer
    if not ix:
        return ()
    return (Gemm(ix.q_lora_rank, ix.num_heads * ix.head_dim), Gemm(spec.hidden, ix.head_dim),
            Gemm(spec.hidden, ix.num_heads))


def ffn_gemms(hidden: int, intermediate: int, gated: bool, fused_gate_up: bool) -> tuple[Gemm, ...]:
    if not intermediate:
        return ()
    down = Gemm(intermediate, hidden, True)
    if not gated:
        return (Gemm(hidden, intermediate), down)
    if fused_gate_up:
        return (Gemm(hidden, 2 * intermediate), down)
    return (Gemm(hidden, intermediate), Gemm(hidden, intermediate), down)


def model_gemms(spec: ModelSpec) -> dict[str, tuple[Gemm, ...]]:
    """Per component (the simulator's operator names), the weight matrices of one layer (lm_head: of the model)."""
    h = spec.hidden
    out = {
        "attn_proj": attention_gemms(spec.attention, h) + indexer_gemms(spec),
        "router": (Gemm(h, spec.num_experts),) if spec.num_experts else (),
        "routed_experts": ffn_gemms(h, spec.expert_intermediate, spec.gated_ffn, True) if spec.num_experts else (),
        "shared_experts": ffn_gemms(h, spec.shared_intermediate, spec.gated_ffn, False),
        "dense_ffn": ffn_gemms(h, spec.dense_intermediate, spec.gated_ffn, False)
        if spec.layers > spec.num_moe_layers else (),
        "lm_head": (Gemm(h, spec.vocab),),
    }
    if spec.attention.kind == "mla":  # expanded MLA decode runs kv_b_proj over the cached latents
        a = spec.attention
        out["mla_expand"] = (Gemm(a.kv_lora_rank, a.num_heads * (a.head_dim - a.qk_rope_head_dim + a.v_head_dim)),)
    return out


def distinct_shapes(spec: ModelSpec) -> list[tuple[int, int]]:
    """Every (K, N) the model multiplies, once each, in a stable order."""
    seen: dict[tuple[int, int], None] = {}
    for gemms in model_gemms(spec).values():
        for g in gemms:
            seen.setdefault((g.k, g.n), None)
    return list(seen)
