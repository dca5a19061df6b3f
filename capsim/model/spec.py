"""ModelSpec: the shapes of a (MoE) transformer, read from a Hugging Face config.json.

Pure Python (no torch): the prediction path builds specs from config dicts.
One reader covers every family through a table of key synonyms; the few
family facts that a config does not state (Qwen2's q/k/v bias, Qwen3's q/k norms,
GPT-OSS's expert biases and attention sinks) are named constants citing the transformers class
that defines them. :mod:`capsim.model.meta` checks every count here against
the real transformers class instantiated on torch's meta device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capsim import checks
from capsim.checks import MAX_EXPERTS, MAX_LAYERS, MAX_WIDTH
from capsim.errors import CapsimError

# Facts the config does not carry, from the transformers modelling code (v5.23):
QKV_BIAS_MODEL_TYPES = {"qwen2_moe", "qwen2"}  # Qwen2MoeAttention: q/k/v_proj bias=True, o_proj bias=False
EXPERT_BIAS_MODEL_TYPES = {"gpt_oss"}  # GptOssExperts: gate_up_proj_bias, down_proj_bias; GptOssTopKRouter: bias
ATTENTION_SINK_MODEL_TYPES = {"gpt_oss"}  # GptOssAttention.sinks: one parameter per attention head
SHARED_EXPERT_GATE_MODEL_TYPES = {"qwen2_moe"}  # Qwen2MoeSparseMoeBlock.shared_expert_gate: Linear(h, 1)
QK_NORM_MODEL_TYPES = {"qwen3_moe", "qwen3"}  # Qwen3MoeAttention.q_norm / k_norm: RMSNorm(head_dim) each
# OlmoeAttention.q_norm: RMSNorm(hidden_size = heads x head_dim), k_norm: RMSNorm(kv_heads x head_dim):
# one norm over the whole projection width, not one per head.
FULL_WIDTH_QK_NORM_MODEL_TYPES = {"olmoe"}
# DbrxNormAttentionNorm.norm_1 / norm_2 and DbrxModel.norm_f are nn.LayerNorm(d_model, bias=False): a weight
# only, so they count like the RMSNorms of the other families. DbrxAttention.Wqkv fuses q, k, v without bias.
ALIASED_MODEL_TYPES = {"kimi_k2": "deepseek_v3"}  # Kimi-K2 ships DeepseekV3 code (remote code)

_SYNONYMS: dict[str, tuple[str, ...]] = {
    "num_experts": ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"),
    "top_k": ("num_experts_per_tok", "experts_per_token", "moe_top_k"),
    # OLMoE has no moe_intermediate_size: its intermediate_size is the expert width (OlmoeExperts).
    "expert_intermediate": ("moe_intermediate_size", "ffn_hidden_size"),  # DBRX: ffn_config.ffn_hidden_size
    "layers": ("num_hidden_layers", "n_layers"),
    "hidden": ("hidden_size", "d_model"),
    "heads": ("num_attention_heads", "n_heads"),
}


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
        q = h * nh * self.head_dim
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
class ModelSpec:
    id: str
    model_type: str
    hidden: int
    layers: int
    vocab: int
    tie_embeddings: bool
    attention: Attention
    moe_layers: tuple[bool, ...]  # per layer: MoE FFN (True) or dense FFN (False)
    num_experts: int  # routed experts per MoE layer (0 for a dense model)
    top_k: int
    expert_intermediate: int
    shared_intermediate: int  # total intermediate width of the shared expert(s); 0 if none
    dense_intermediate: int  # FFN width of dense layers
    gated_ffn: bool = True  # SwiGLU: gate, up, down (3 matrices); plain: up, down (2)
    expert_bias: bool = False
    shared_expert_gate: bool = False
    # Per layer: how many past positions attention sees (0 = all). Sliding windows (gpt-oss) and
    # Llama-4's chunked attention (treated as a window of the chunk size: an upper bound). Empty: all full.
    attention_windows: tuple[int, ...] = ()

    # ------------------------------------------------------------ parameter counts
    def ffn_params(self, intermediate: int, bias: bool = False) -> int:
        mats = 3 if self.gated_ffn else 2
        return mats * self.hidden * intermediate + ((2 * intermediate + self.hidden) if bias else 0)

    @property
    def expert_params(self) -> int:
        """One routed expert."""
        return self.ffn_params(self.expert_intermediate, self.expert_bias)

    @property
    def router_params(self) -> int:
        return self.hidden * self.num_experts + (self.num_experts if self.expert_bias else 0)

    @property
    def shared_params(self) -> int:
        if not self.shared_intermediate:
            return 0
        return self.ffn_params(self.shared_intermediate) + (self.hidden if self.shared_expert_gate else 0)

    @property
    def num_moe_layers(self) -> int:
        return sum(self.moe_layers)

    def params_breakdown(self) -> dict[str, int]:
        """Parameters by component over the whole model (norm weights counted, rotary buffers not)."""
        n_moe = self.num_moe_layers
        n_dense = self.layers - n_moe
        embed = self.vocab * self.hidden
        return {
            "embedding": embed,
            "lm_head": 0 if self.tie_embeddings else embed,
            "attention": self.layers * self.attention.params(self.hidden),
            "norms": (2 * self.layers + 1) * self.hidden + self.layers * self.attention.norm_params(),
            "dense_ffn": n_dense * self.ffn_params(self.dense_intermediate),
            "router": n_moe * self.router_params,
            "shared_experts": n_moe * self.shared_params,
            "routed_experts": n_moe * self.num_experts * self.expert_params,
        }

    @property
    def total_params(self) -> int:
        return sum(self.params_breakdown().values())

    @property
    def active_params(self) -> int:
        """Parameters one token uses: all but the routed experts it is not sent to."""
        b = self.params_breakdown()
        return self.total_params - b["routed_experts"] + self.num_moe_layers * self.top_k * self.expert_params


def _get(cfg: dict[str, Any], name: str, default: Any = None, required: bool = True) -> Any:
    for key in _SYNONYMS.get(name, (name,)):
        if cfg.get(key) is not None:
            return cfg[key]
    if required:
        raise CapsimError(f"config.json: field {'/'.join(_SYNONYMS.get(name, (name,)))} is missing")
    return default


def _int(cfg: dict[str, Any], name: str, default: int | None = None, required: bool = True, minimum: int = 1,
         maximum: int = MAX_WIDTH) -> int:
    """An integer field (synonyms allowed), checked: CapsimError naming the field otherwise."""
    raw = _get(cfg, name, default, required)
    keys = "/".join(_SYNONYMS.get(name, (name,)))
    return checks.integer(raw, f"config.json: field {keys}", low=minimum, high=maximum)


def _opt(cfg: dict[str, Any], key: str, default: int, minimum: int = 0, maximum: int = MAX_WIDTH) -> int:
    """An optional integer field (absent or null: ``default``), checked like :func:`_int`."""
    raw = cfg.get(key)
    return default if raw is None else checks.integer(raw, f"config.json: field {key}", low=minimum, high=maximum)


def _int_list(cfg: dict[str, Any], key: str, length: int | None = None, maximum: int = MAX_WIDTH) -> list[int]:
    """An optional list of integers (absent or null: empty), each checked, of ``length`` items when given."""
    raw = cfg.get(key)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise CapsimError(f"config.json: field {key} is {raw!r}, expected a list of integers")
    if length is not None and len(raw) != length:
        raise CapsimError(f"config.json: field {key} has {len(raw)} entries, expected one per layer ({length})")
    return [checks.integer(v, f"config.json: field {key}[{i}]", low=0, high=maximum) for i, v in enumerate(raw)]


# Fields of architectures capsim does not model: hybrid linear-attention / state-space layers (Qwen3-Next,
# MiniMax, Jamba, Nemotron-H, Zamba). Pricing such a model as full attention would be wrong without a word.
UNMODELLED_FIELDS = ("full_attention_interval", "linear_conv_kernel_dim", "linear_key_head_dim",
                     "linear_num_key_heads", "linear_num_value_heads", "linear_value_head_dim", "attn_type_list",
                     "layers_block_type", "hybrid_override_pattern", "attn_layer_period", "mamba_d_state",
                     "ssm_state_size", "mamba_expand")
ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention")


def _refuse_unmodelled(cfg: dict[str, Any]) -> None:
    found = [k for k in UNMODELLED_FIELDS if cfg.get(k) is not None]
    if found:
        raise CapsimError(f"config.json: field(s) {', '.join(found)} describe linear-attention or state-space "
                          "layers, which capsim does not model (it models softmax attention only)")


def _flatten(cfg: dict[str, Any]) -> dict[str, Any]:
    """Nested sub-configs (Llama-4 text_config, DBRX ffn_config / attn_config) lifted to the top.

    text_config's keys win (Llama-4: model_type llama4_text, and the text model's shapes). DBRX's sub-configs
    only fill keys the top level lacks: transformers dumps of them carry PretrainedConfig defaults such as
    ``"model_type": ""`` and ``"tie_word_embeddings": true`` that must not override the model's own keys.
    """
    out = dict(cfg)
    if isinstance(cfg.get("text_config"), dict):
        out = {**out, **cfg["text_config"]}
    for sub in ("ffn_config", "attn_config"):
        if isinstance(cfg.get(sub), dict):
            out = {**cfg[sub], **out}
    return out


LLAMA4_NOPE_INTERVAL = 4  # Llama4TextConfig.no_rope_layer_interval: every 4th layer is NoPE, full attention


def _attention_windows(cfg: dict[str, Any], model_type: str, layers: int) -> tuple[int, ...]:
    """Per-layer attention span from layer_types / sliding_window / attention_chunk_size (0 = full)."""
    window = 0 if cfg.get("use_sliding_window") is False else _opt(cfg, "sliding_window", 0)
    chunk = _opt(cfg, "attention_chunk_size", 0)
    types = cfg.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != layers:
            got = f"{len(types)} entries" if isinstance(types, list) else repr(types)
            raise CapsimError(f"config.json: field layer_types is {got}, expected a list of one entry per layer "
                              f"({layers})")
        unknown = sorted({str(t) for t in types} - set(ATTENTION_LAYER_TYPES))
        if unknown:
            raise CapsimError(f"config.json: field layer_types: {', '.join(unknown)} layers are not modelled "
                              f"(capsim models {', '.join(ATTENTION_LAYER_TYPES)})")
    if not types and chunk and model_type.startswith("llama4"):
        nope = _int_list(cfg, "no_rope_layers", layers, maximum=1) or [
            int((i + 1) % LLAMA4_NOPE_INTERVAL != 0) for i in range(layers)]
        types = ["chunked_attention" if rope else "full_attention" for rope in nope]
    if types:
        spans = {"sliding_attention": window, "chunked_attention": chunk}
        out = tuple(spans.get(t, 0) for t in types)
        return out if any(out) else ()
    return (window,) * layers if window else ()


def _moe_layer_mask(cfg: dict[str, Any], layers: int, num_experts: int) -> tuple[bool, ...]:
    if not num_experts:
        return (False,) * layers
    first_dense = _opt(cfg, "first_k_dense_replace", 0, maximum=MAX_LAYERS)  # DeepSeek-V2/V3
    flags = None  # moe_layer_freq given as one 0/1 flag per layer
    if isinstance(cfg.get("moe_layer_freq"), list):
        flags, freq = _int_list(cfg, "moe_layer_freq", layers, maximum=1), 1
    else:
        freq = _opt(cfg, "moe_layer_freq", 1, minimum=1, maximum=MAX_LAYERS)
    step = _opt(cfg, "decoder_sparse_step", 1, minimum=1, maximum=MAX_LAYERS)  # Qwen2-MoE / Qwen3-MoE
    mlp_only = set(_int_list(cfg, "mlp_only_layers", maximum=MAX_LAYERS))
    interleave = _opt(cfg, "interleave_moe_layer_step", 1, minimum=1, maximum=MAX_LAYERS)  # Llama-4: every n-th
    mask = []
    for i in range(layers):  # layers <= MAX_LAYERS (checked where read)
        moe = i >= first_dense and i % freq == 0 and (i + 1) % step == 0 and i not in mlp_only
        moe = moe and (i + 1) % interleave == 0 and (flags is None or flags[i] == 1)
        mask.append(moe)
    return tuple(mask)


def _top_k(cfg: dict[str, Any], num_experts: int) -> int:
    if not num_experts:
        return 0
    k = _int(cfg, "top_k")
    if k > num_experts:
        raise CapsimError(f"config.json: top-k {k} exceeds the {num_experts} routed experts")
    return k


def spec_from_config(cfg: dict[str, Any], model_id: str = "custom") -> ModelSpec:
    """A ModelSpec from a config.json dict; CapsimError naming the missing field otherwise."""
    cfg = _flatten(cfg)
    _refuse_unmodelled(cfg)
    model_type = ALIASED_MODEL_TYPES.get(str(cfg.get("model_type", "")), str(cfg.get("model_type", "")))
    hidden = _int(cfg, "hidden")
    layers = _int(cfg, "layers", maximum=MAX_LAYERS)
    heads = _int(cfg, "heads")
    num_experts = _int(cfg, "num_experts", 0, required=False, minimum=0, maximum=MAX_EXPERTS)
    if cfg.get("kv_lora_rank"):
        rope, nope = _int(cfg, "qk_rope_head_dim", minimum=0), _int(cfg, "qk_nope_head_dim", minimum=0)
        attn = Attention(
            "mla", heads, heads, rope + nope, _int(cfg, "v_head_dim"),
            q_lora_rank=_opt(cfg, "q_lora_rank", 0) or None, kv_lora_rank=_int(cfg, "kv_lora_rank"),
            qk_rope_head_dim=rope,
        )
    else:
        head_dim = _int(cfg, "head_dim") if cfg.get("head_dim") else hidden // heads
        if head_dim < 1:
            raise CapsimError(f"config.json: hidden_size {hidden} / num_attention_heads {heads} gives no head_dim")
        kv_key = "num_key_value_heads" if cfg.get("num_key_value_heads") is not None else "kv_n_heads"
        kv_heads = _opt(cfg, kv_key, heads, minimum=1)
        if kv_heads > heads or heads % kv_heads:
            raise CapsimError(f"config.json: field {kv_key} is {kv_heads}, expected a divisor of the {heads} "
                              "attention heads")
        bias = bool(cfg.get("attention_bias", False))
        attn = Attention(
            "gqa", heads, kv_heads, head_dim, head_dim,
            qkv_bias=bias or model_type in QKV_BIAS_MODEL_TYPES, o_bias=bias,
            sinks=model_type in ATTENTION_SINK_MODEL_TYPES,
            qk_norm=model_type in QK_NORM_MODEL_TYPES | FULL_WIDTH_QK_NORM_MODEL_TYPES,
            qk_norm_full_width=model_type in FULL_WIDTH_QK_NORM_MODEL_TYPES,
        )
    inter = _int(cfg, "intermediate_size", 0, required=not num_experts, minimum=0 if num_experts else 1)
    expert_inter = _int(cfg, "expert_intermediate", inter, required=False, minimum=1 if num_experts else 0)
    shared = _opt(cfg, "shared_expert_intermediate_size", 0)
    if cfg.get("n_shared_experts"):
        shared = _opt(cfg, "n_shared_experts", 0, maximum=MAX_EXPERTS) * expert_inter
    if model_type.startswith("llama4"):  # one shared expert of the expert width in every MoE layer
        shared = expert_inter
    dense_inter = _opt(cfg, "intermediate_size_mlp", 0) or inter
    return ModelSpec(
        id=model_id,
        model_type=model_type,
        hidden=hidden,
        layers=layers,
        vocab=_int(cfg, "vocab_size"),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention=attn,
        moe_layers=_moe_layer_mask(cfg, layers, num_experts),
        num_experts=num_experts,
        top_k=_top_k(cfg, num_experts),
        expert_intermediate=expert_inter,
        shared_intermediate=shared,
        dense_intermediate=dense_inter,
        expert_bias=model_type in EXPERT_BIAS_MODEL_TYPES,
        shared_expert_gate=model_type in SHARED_EXPERT_GATE_MODEL_TYPES and bool(shared),
        attention_windows=_attention_windows(cfg, model_type, layers),
    )
