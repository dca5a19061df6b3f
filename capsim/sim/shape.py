"""The per-layer numbers the simulator needs, taken once from a ModelSpec and a precision.

Plain floats (counts of parameters and elements), so that the step formulas in
:mod:`capsim.sim.ops` broadcast over numpy arrays of scenarios.
"""

from __future__ import annotations

from dataclasses import dataclass

from capsim.model.eager import Tensors, eager_tensors
from capsim.model.gemms import Gemm, model_gemms
from capsim.model.spec import ModelSpec
from capsim.precision import SIXTEEN_BIT, Precision

# DeepSeek-V2 paper (arXiv:2405.04434) section 2.1.2: at inference W_UK is absorbed into W_Q and W_UV
# into W_O, so decode attends over the compressed latent (vLLM and SGLang MLA backends do this);
# prefill decompresses K and V and attends per head.
MLA_DECODE_ABSORBED = True


@dataclass(frozen=True)
class Shape:
    layers: int
    moe_layers: int
    dense_layers: int
    hidden: int
    vocab: int
    heads: int
    num_kv_heads: int
    mla: bool
    kv_elements_per_token_layer: int  # cached elements per token per layer
    qk_dim_prefill: int  # per head, score dot-product length
    v_dim_prefill: int
    qk_dim_decode: int
    v_dim_decode: int
    mla_latent: int  # MLA: cached latent width (kv_lora_rank); 0 otherwise
    mla_up_width: int  # MLA: kv_b_proj output per token, heads x (qk_nope + v); 0 otherwise
    attn_params: int  # one layer's attention projections
    attn_io_width: int  # activation elements in + out of the projections, per token
    num_experts: int
    top_k: int
    expert_params: int
    expert_intermediate: int  # one routed expert's intermediate width
    expert_io_width: int  # per token per expert: in + intermediates + out
    shared_params: int
    shared_io_width: int
    dense_params: int
    dense_io_width: int
    router_params: int
    norm_params_layer: int
    final_norm_params: int
    # bytes per parameter, by component class
    attn_weight_bytes: float
    expert_weight_bytes: float
    ffn_weight_bytes: float  # dense FFN and shared experts
    lm_head_weight_bytes: float
    other_weight_bytes: float  # router, norms (and the embedding table unless embedding_weight_bytes)
    tie_embeddings: bool
    windows: tuple[tuple[int, int], ...]  # (attention window, 0 for full, -1 linear; number of layers)
    act_bytes: float = 2.0  # bytes per activation element
    embedding_weight_bytes: float = 0.0  # the token-embedding table (0: other_weight_bytes)
    # Per operator, the weight matrices one layer multiplies (:mod:`capsim.model.gemms`)
    gemms: tuple[tuple[str, tuple[Gemm, ...]], ...] = ()
    # Per operator, the per-token tensors an eager forward allocates (:mod:`capsim.model.eager`)
    eager: tuple[tuple[str, tuple[Tensors, ...]], ...] = ()
    # Per operator, the share of its FLOPs on weights a block format could not hold (GGUF fallback to 16 bit):
    # they multiply on the 16-bit path (capsim.precision.Precision.bits_for_row)
    sixteen_bit_share: tuple[tuple[str, float], ...] = ()
    # Hybrid models: layers of Gated DeltaNet linear attention (their projections are in attn_params, the
    # average over all layers), the state elements one sequence keeps per such layer and the recurrence's FLOPs
    # per token per such layer (capsim.model.mixers.LinearAttention)
    linear_layers: int = 0
    # DeepSeek-V3.2 sparse attention: keys the attention keeps per query (0: dense), the indexer's heads and key
    # width (it scores every cached key and caches one key of indexer_dim per token and layer); ``windows`` then
    # count the kept keys (a window of topk: the same count) and ``cache_windows`` what the cache holds
    sparse_topk: int = 0
    indexer_heads: int = 0
    indexer_dim: int = 0
    cache_windows: tuple[tuple[int, int], ...] = ()
    linear_state_elements: int = 0
    linear_flops_per_token: float = 0.0

    def sixteen_share_of(self, op: str) -> float:
        return dict(self.sixteen_bit_share).get(op, 0.0)

    def gemms_of(self, op: str) -> tuple[Gemm, ...]:
        return dict(self.gemms).get(op, ())

    def eager_of(self, op: str) -> tuple[Tensors, ...]:
        return dict(self.eager).get(op, ())

    @property
    def shared_experts_present(self) -> bool:
        return self.shared_params > 0


def _ffn_io(spec: ModelSpec, inter: int) -> int:
    """Per token: read the input, write and read gate/up outputs, write the output."""
    mats = 2 if spec.gated_ffn else 1
    return 2 * spec.hidden + (mats + 1) * inter


def _stored(gemms: tuple[Gemm, ...], prec: Precision, default: float) -> tuple[float, float]:
    """Bytes per weight of a component's matrices as the format stores them (row by row, with its fallbacks),
    and the share of their weights (so of their FLOPs) left in 16 bit; ``default`` where there are none."""
    total = sum(g.k * g.n for g in gemms)
    if prec.block == 1 or not total:
        return default, 0.0
    bits = [(g.k * g.n, prec.bits_for_row(g.k)) for g in gemms]
    nbytes = sum(w * b for w, b in bits) / 8.0 / total
    return nbytes, sum(w for w, b in bits if b >= SIXTEEN_BIT) / total


def shape_of(spec: ModelSpec, prec: Precision) -> Shape:
    a = spec.attention
    if a.kind == "mla":
        qk_dec = (a.kv_lora_rank or 0) + (a.qk_rope_head_dim or 0) if MLA_DECODE_ABSORBED else a.head_dim
        v_dec = (a.kv_lora_rank or 0) if MLA_DECODE_ABSORBED else a.v_head_dim
        io = 2 * spec.hidden + (a.q_lora_rank or 0) + a.num_heads * (a.head_dim + a.v_head_dim) + a.kv_elements_per_token()
    else:
        qk_dec, v_dec = a.head_dim, a.v_head_dim
        io = 2 * spec.hidden + a.num_heads * (a.head_dim + a.v_head_dim) + a.kv_elements_per_token()
    lin = prec.bytes_per_weight
    sixteen = prec.activation_bytes
    experts_only = prec.scope == "experts"
    n_moe = spec.num_moe_layers
    gemms = model_gemms(spec)
    attn_b, attn_16 = _stored(gemms["attn_proj"], prec, lin)
    exp_b, exp_16 = _stored(gemms["routed_experts"], prec, lin)
    ffn_b, ffn_16 = _stored(gemms["dense_ffn"] + gemms["shared_experts"], prec, lin)
    return Shape(
        layers=spec.layers,
        moe_layers=n_moe,
        dense_layers=spec.layers - n_moe,
        hidden=spec.hidden,
        vocab=spec.vocab,
        heads=a.num_heads,
        num_kv_heads=a.num_kv_heads,
        mla=a.kind == "mla",
        kv_elements_per_token_layer=a.kv_elements_per_token(),
        qk_dim_prefill=a.head_dim,
        v_dim_prefill=a.v_head_dim,
        qk_dim_decode=qk_dec,
        v_dim_decode=v_dec,
        mla_latent=(a.kv_lora_rank or 0) if a.kind == "mla" else 0,
        mla_up_width=a.num_heads * (a.head_dim - (a.qk_rope_head_dim or 0) + a.v_head_dim) if a.kind == "mla" else 0,
        attn_params=spec.params_breakdown()["attention"] / spec.layers,
        attn_io_width=io,
        num_experts=spec.num_experts,
        top_k=spec.top_k,
        expert_params=spec.expert_params if spec.num_experts else 0,
        expert_intermediate=spec.expert_intermediate if spec.num_experts else 0,
        expert_io_width=_ffn_io(spec, spec.expert_intermediate) if spec.num_experts else 0,
        shared_params=spec.shared_params,
        shared_io_width=_ffn_io(spec, spec.shared_intermediate) if spec.shared_intermediate else 0,
        dense_params=spec.ffn_params(spec.dense_intermediate) if spec.layers > n_moe else 0,
        dense_io_width=_ffn_io(spec, spec.dense_intermediate),
        router_params=spec.router_params if spec.num_experts else 0,
        norm_params_layer=2 * spec.hidden + a.norm_params(),
        final_norm_params=spec.hidden,
        attn_weight_bytes=sixteen if experts_only else attn_b,
        expert_weight_bytes=exp_b,
        ffn_weight_bytes=sixteen if experts_only else ffn_b,
        lm_head_weight_bytes=prec.lm_head_bits / 8.0,
        other_weight_bytes=sixteen,
        tie_embeddings=spec.tie_embeddings,
        windows=((spec.indexer.topk, spec.layers),) if spec.indexer else _window_groups(spec),
        cache_windows=_window_groups(spec),
        act_bytes=prec.activation_bytes,
        embedding_weight_bytes=prec.embedding_bits / 8.0,
        gemms=tuple(gemms.items()),
        sixteen_bit_share=tuple((op, share) for op, share in (("attn_proj", attn_16), ("routed_experts", exp_16),
                                                              ("dense_ffn", ffn_16), ("shared_experts", ffn_16))
                                if share > 0),
        eager=tuple(eager_tensors(spec).items()),
        linear_layers=spec.num_linear_layers,
        sparse_topk=spec.indexer.topk if spec.indexer else 0,
        indexer_heads=spec.indexer.num_heads if spec.indexer else 0,
        indexer_dim=spec.indexer.head_dim if spec.indexer else 0,
        linear_state_elements=spec.linear_attention.state_elements() if spec.linear_attention else 0,
        linear_flops_per_token=spec.linear_attention.flops_per_token() if spec.linear_attention else 0.0,
    )


def _window_groups(spec: ModelSpec) -> tuple[tuple[int, int], ...]:
    if not spec.attention_windows:
        return ((0, spec.layers),)
    ws = spec.attention_windows
    return tuple((w, ws.count(w)) for w in sorted(set(ws)))


def weight_bytes(s: Shape) -> dict[str, float]:
    """Stored weight bytes by component for the whole model (every expert)."""
    embed = s.vocab * s.hidden
    return {
        "embedding": embed * (s.embedding_weight_bytes or s.other_weight_bytes),
        "lm_head": 0.0 if s.tie_embeddings else embed * s.lm_head_weight_bytes,
        "attention": s.layers * s.attn_params * s.attn_weight_bytes,
        "norms": (s.layers * s.norm_params_layer + s.final_norm_params) * s.other_weight_bytes,
        "dense_ffn": s.dense_layers * s.dense_params * s.ffn_weight_bytes,
        "router": s.moe_layers * s.router_params * s.other_weight_bytes,
        "shared_experts": s.moe_layers * s.shared_params * s.ffn_weight_bytes,
        "routed_experts": s.moe_layers * s.num_experts * s.expert_params * s.expert_weight_bytes,
    }
