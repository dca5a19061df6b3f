"""A layer's token mixer: softmax attention (GQA / MHA / MLA) or a Gated DeltaNet linear attention, with
its weights, its norms and what it keeps per sequence (K/V per token, or a fixed state)."""

from __future__ import annotations

from dataclasses import dataclass

LINEAR = -1  # attention_windows entry of a linear-attention layer (no KV cache: a fixed state per sequence)
# Gated DeltaNet recurrence per token and value head (transformers torch_recurrent_gated_delta_rule, Qwen3-Next):
# decay S *= g (1 FLOP per state element), kv_mem = S^T k (2), S += k (x) delta (2), out = S^T q (2)
DELTANET_FLOPS_PER_STATE_ELEMENT = 7


@dataclass(frozen=True)
class Attention:
    kind: str  # "gqa" or "mla"
    num_heads: int
    num_kv_heads: int
    head_dim: int  # q/k per head (MLA: qk_nope + qk_rope)
    v_head_dim: int
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    sinks: bool = False
    qk_norm: bool = False
    qk_norm_full_width: bool = False  # OLMoE: q/k norms span all heads rather than one head_dim
    output_gate: bool = False  # Qwen3-Next: q_proj also yields a per-head output gate (twice the width)

    def norm_params(self) -> int:
        """RMSNorm weights inside the attention block: MLA latent norms, Qwen3 per-head or OLMoE full q/k norms."""
        if self.kind == "mla":
            return (self.q_lora_rank or 0) + self.kv_lora_rank
        if not self.qk_norm:
            return 0
        if self.qk_norm_full_width:
            return (self.num_heads + self.num_kv_heads) * self.head_dim
        return 2 * self.head_dim

    def params(self, hidden: int) -> int:
        """Weights of one layer's attention projections, biases and sinks (norms: see norm_params)."""
        h, nh = hidden, self.num_heads
        if self.kind == "mla":
            q_out = nh * self.head_dim
            q = h * q_out if not self.q_lora_rank else h * self.q_lora_rank + self.q_lora_rank * q_out
            kv_a = h * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv_b = self.kv_lora_rank * nh * (self.head_dim - self.qk_rope_head_dim + self.v_head_dim)
            return q + kv_a + kv_b + nh * self.v_head_dim * h
        q = h * nh * self.head_dim * (2 if self.output_gate else 1)
        kv = 2 * h * self.num_kv_heads * self.head_dim
        o = nh * self.head_dim * h
        bias = (nh * self.head_dim + 2 * self.num_kv_heads * self.head_dim) if self.qkv_bias else 0
        return q + kv + o + bias + (h if self.o_bias else 0) + (nh if self.sinks else 0)

    def kv_elements_per_token(self) -> int:
        """Cached elements per token per layer: K and V heads (GQA) or the compressed latent + rope key (MLA)."""
        if self.kind == "mla":
            return self.kv_lora_rank + self.qk_rope_head_dim
        return self.num_kv_heads * (self.head_dim + self.v_head_dim)


@dataclass(frozen=True)
class LinearAttention:
    """A Gated DeltaNet token mixer (Qwen3NextGatedDeltaNet): in_proj_qkvz, in_proj_ba, a depthwise causal conv
    over q|k|v, dt_bias and A_log per value head, a gated RMSNorm of the value head width, out_proj. Per sequence
    it keeps a recurrent state (value heads x key dim x value dim) and the conv's last kernel - 1 inputs, whatever
    the context length."""

    num_k_heads: int
    num_v_heads: int
    k_head_dim: int
    v_head_dim: int
    conv_kernel: int

    @property
    def conv_dim(self) -> int:
        return 2 * self.num_k_heads * self.k_head_dim + self.num_v_heads * self.v_head_dim

    def params(self, hidden: int) -> int:
        key, value = self.num_k_heads * self.k_head_dim, self.num_v_heads * self.v_head_dim
        return (hidden * (2 * key + 2 * value) + hidden * 2 * self.num_v_heads + self.conv_dim * self.conv_kernel
                + 2 * self.num_v_heads + value * hidden)

    def norm_params(self) -> int:
        return self.v_head_dim

    def state_elements(self) -> int:
        """Elements one sequence keeps per layer: the recurrent state and the conv window."""
        return self.num_v_heads * self.k_head_dim * self.v_head_dim + self.conv_dim * (self.conv_kernel - 1)

    def flops_per_token(self) -> int:
        """The recurrence and the depthwise conv, per token (projections excluded: they are GEMMs)."""
        return (DELTANET_FLOPS_PER_STATE_ELEMENT * self.num_v_heads * self.k_head_dim * self.v_head_dim
                + 2 * self.conv_dim * self.conv_kernel)


@dataclass(frozen=True)
class Indexer:
    """DeepSeek-V3.2's sparse-attention indexer (DeepseekV32Indexer, "DeepSeek Sparse Attention"): per layer,
    wq_b (q_lora_rank -> heads x head_dim), wk (hidden -> head_dim), k_norm (LayerNorm(head_dim): weight and
    bias) and weights_proj (hidden -> heads). It scores every past key with one small key per token (head_dim
    wide, cached) and keeps the top ``topk`` keys per query for the MLA attention."""

    num_heads: int  # index_n_heads
    head_dim: int  # index_head_dim
    topk: int  # index_topk: keys read per query by the sparse attention
    q_lora_rank: int  # the query latent the indexer's wq_b reads (the MLA q_lora_rank)

    def params(self, hidden: int) -> int:
        return (self.q_lora_rank * self.num_heads * self.head_dim + hidden * self.head_dim + 2 * self.head_dim
                + hidden * self.num_heads)

    def key_elements_per_token(self) -> int:
        """The indexer's own cached key per token and layer (one head_dim vector)."""
        return self.head_dim
