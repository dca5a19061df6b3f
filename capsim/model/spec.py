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

from capsim.checks import MAX_EXPERTS, MAX_LAYERS
from capsim.errors import CapsimError
from capsim.model import known_fields
from capsim.model.config_read import (
    _SYNONYMS,
    INDEXER_MODEL_TYPES,
    LINEAR_FIELDS,
    READ_FIELDS,
    _attention_windows,
    _flatten,
    _int,
    _moe_layer_mask,
    _opt,
    _refuse_unmodelled,
    _top_k,
)
from capsim.model.mixers import LINEAR, Attention, Indexer, LinearAttention

__all__ = ["LINEAR", "Attention", "Indexer", "LinearAttention", "ModelSpec", "spec_from_config", "_SYNONYMS"]

# Facts the config does not carry, from the transformers modelling code (v5.23):
QKV_BIAS_MODEL_TYPES = {"qwen2_moe", "qwen2"}  # Qwen2MoeAttention: q/k/v_proj bias=True, o_proj bias=False
EXPERT_BIAS_MODEL_TYPES = {"gpt_oss"}  # GptOssExperts: gate_up_proj_bias, down_proj_bias; GptOssTopKRouter: bias
ATTENTION_SINK_MODEL_TYPES = {"gpt_oss"}  # GptOssAttention.sinks: one parameter per attention head
# Qwen2MoeSparseMoeBlock / Qwen3NextSparseMoeBlock.shared_expert_gate: Linear(h, 1)
SHARED_EXPERT_GATE_MODEL_TYPES = {"qwen2_moe", "qwen3_next"}
# Qwen3MoeAttention / Qwen3NextAttention.q_norm / k_norm: RMSNorm(head_dim) each
QK_NORM_MODEL_TYPES = {"qwen3_moe", "qwen3", "qwen3_next"}
# Glm4MoeAttention: q/k/v biased by attention_bias, o_proj always bias=False
O_BIAS_FREE_MODEL_TYPES = {"glm4_moe"}
# Qwen3NextAttention.q_proj: hidden -> heads x head_dim x 2 (the query and a sigmoid output gate)
OUTPUT_GATE_MODEL_TYPES = {"qwen3_next"}
# OlmoeAttention.q_norm: RMSNorm(hidden_size = heads x head_dim), k_norm: RMSNorm(kv_heads x head_dim):
# one norm over the whole projection width, not one per head.
# MiniMaxM2Attention.q_norm / k_norm likewise (RMSNorm(heads x head_dim), RMSNorm(kv_heads x head_dim)).
FULL_WIDTH_QK_NORM_MODEL_TYPES = {"olmoe", "minimax_m2"}
# Ernie4_5_MoeStatics.e_score_correction_bias: a parameter (1 x experts) in the router, not a buffer as in
# DeepSeek-V3 / GLM-4.5 / MiniMax-M2 (whose routing bias is a buffer and holds no parameter).
ROUTER_BIAS_PARAM_MODEL_TYPES = {"ernie4_5_moe"}
# DeepseekV32Indexer defaults (DeepseekV32Config) when the config leaves the index_* fields out.
INDEXER_DEFAULTS = {"index_n_heads": 64, "index_head_dim": 128, "index_topk": 2048}
# Multi-token-prediction modules: the fields that count them. transformers builds none of them (the checkpoint's
# MTP weights are dropped on load), so they are counted apart from the main model (ModelSpec.mtp_params).
MTP_FIELDS = ("num_nextn_predict_layers", "num_mtp_layers")  # DeepSeek-V3 / GLM-4.5; ERNIE-4.5
TIED_BY_DEFAULT_MODEL_TYPES = {"ernie4_5_moe"}  # Ernie4_5_MoeConfig.tie_word_embeddings defaults to True
# DbrxNormAttentionNorm.norm_1 / norm_2 and DbrxModel.norm_f are nn.LayerNorm(d_model, bias=False): a weight
# only, so they count like the RMSNorms of the other families. DbrxAttention.Wqkv fuses q, k, v without bias.
ALIASED_MODEL_TYPES = {"kimi_k2": "deepseek_v3"}  # Kimi-K2 ships DeepseekV3 code (remote code)


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
    linear_attention: LinearAttention | None = None  # the mixer of the layers whose window is LINEAR
    router_bias_param: bool = False  # ERNIE-4.5: the routing (score-correction) bias is a parameter
    indexer: Indexer | None = None  # DeepSeek-V3.2 sparse attention: every layer's indexer
    # Node-limited (group-limited) routing: experts in n_group groups, a token's top_k chosen among topk_group
    # groups (DeepSeek-V3: 8 groups, 4 chosen). 1 / 1: no limit. Read for the simulator; no weight depends on it.
    n_group: int = 1
    topk_group: int = 1
    mtp_layers: int = 0  # multi-token-prediction modules (not in the published-comparable counts)

    @property
    def index_topk(self) -> int:
        """Keys one query reads under DeepSeek Sparse Attention (0: dense attention, every key)."""
        return self.indexer.topk if self.indexer else 0

    @property
    def mtp_params(self) -> int:
        """Parameters of the multi-token-prediction modules, counted apart from total_params: transformers does
        not build them and the published totals leave them out (DeepSeek-V3: "685B ... includes 671B of the Main
        Model weights and 14B of the Multi-Token Prediction (MTP) Module weights"). One module, DeepSeek-V3's
        layout: a decoder layer like the last main layer, enorm + hnorm (RMSNorm(hidden) each), eh_proj
        (2 hidden -> hidden) and shared_head.norm (RMSNorm(hidden)). The embedding and output head it uses are the
        main model's; DeepSeek's checkpoint stores a copy of each in the module, which is not counted here
        (``mtp_params + mtp_layers * 2 * vocab * hidden`` gives the stored size)."""
        if not self.mtp_layers:
            return 0
        last_moe = bool(self.moe_layers) and self.moe_layers[-1]
        ffn = (self.router_params + self.shared_params + self.num_experts * self.expert_params if last_moe
               else self.ffn_params(self.dense_intermediate))
        layer = self.attention.params(self.hidden) + self.attention.norm_params() + 2 * self.hidden + ffn
        layer += self.indexer.params(self.hidden) if self.indexer else 0
        return self.mtp_layers * (layer + 2 * self.hidden * self.hidden + 3 * self.hidden)

    @property
    def num_linear_layers(self) -> int:
        return sum(1 for w in self.attention_windows if w == LINEAR)

    def features(self) -> list[str]:
        """The architecture features this spec models, named for the user."""
        a, out = self.attention, []
        out.append("multi-head latent attention (MLA)" if a.kind == "mla" else
                   f"{'grouped-query' if a.num_kv_heads < a.num_heads else 'multi-head'} attention")
        if self.num_linear_layers:
            out.append(f"hybrid: {self.num_linear_layers} of {self.layers} layers Gated DeltaNet linear attention "
                       "(a fixed state per sequence, no KV cache)")
        windowed = sorted({w for w in self.attention_windows if w > 0})
        if windowed:
            out.append(f"sliding/chunked attention windows {windowed} on "
                       f"{sum(1 for w in self.attention_windows if w > 0)} layers")
        if a.output_gate:
            out.append("gated attention output")
        if self.num_experts:
            out.append(f"MoE {self.num_experts} experts top-{self.top_k} on {self.num_moe_layers} layers")
        if self.shared_intermediate:
            out.append("shared expert" + (" with a gate" if self.shared_expert_gate else ""))
        if self.indexer:
            out.append(f"DeepSeek sparse attention: an indexer keeps the top {self.indexer.topk} keys per query")
        if self.n_group > 1:
            out.append(f"group-limited routing: top-{self.top_k} within {self.topk_group} of {self.n_group} "
                       "expert groups")
        if self.mtp_layers:
            out.append(f"{self.mtp_layers} multi-token-prediction module(s), {self.mtp_params / 1e9:.2f}B "
                       "parameters outside the totals")
        return out

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
        return self.hidden * self.num_experts + (self.num_experts if self.expert_bias or self.router_bias_param else 0)

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
        n_lin = self.num_linear_layers
        n_full = self.layers - n_lin
        la = self.linear_attention
        lin_params, lin_norm = (la.params(self.hidden), la.norm_params()) if la else (0, 0)
        return {
            "embedding": embed,
            "lm_head": 0 if self.tie_embeddings else embed,
            "attention": n_full * (self.attention.params(self.hidden) + (self.indexer.params(self.hidden)
                                                                          if self.indexer else 0))
            + n_lin * lin_params,
            "norms": (2 * self.layers + 1) * self.hidden + n_full * self.attention.norm_params() + n_lin * lin_norm,
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


def spec_from_config(cfg: dict[str, Any], model_id: str = "custom") -> ModelSpec:
    """A ModelSpec from a config.json dict; CapsimError naming the missing field otherwise."""
    cfg = _flatten(cfg)
    model_type = ALIASED_MODEL_TYPES.get(str(cfg.get("model_type", "")), str(cfg.get("model_type", "")))
    _refuse_unmodelled(cfg, model_type)
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
            qkv_bias=bias or model_type in QKV_BIAS_MODEL_TYPES, o_bias=bias and model_type not in O_BIAS_FREE_MODEL_TYPES,
            sinks=model_type in ATTENTION_SINK_MODEL_TYPES,
            # use_qk_norm: Glm4MoeAttention's per-head q_norm / k_norm (weighted) when the config turns them on
            # (Llama-4's use_qk_norm is a weightless L2 norm: not a parameter)
            qk_norm=model_type in QK_NORM_MODEL_TYPES | FULL_WIDTH_QK_NORM_MODEL_TYPES
            or (model_type == "glm4_moe" and cfg.get("use_qk_norm") is True),
            qk_norm_full_width=model_type in FULL_WIDTH_QK_NORM_MODEL_TYPES,
            output_gate=model_type in OUTPUT_GATE_MODEL_TYPES,
        )
    inter = _int(cfg, "intermediate_size", 0, required=not num_experts, minimum=0 if num_experts else 1)
    expert_inter = _int(cfg, "expert_intermediate", inter, required=False, minimum=1 if num_experts else 0)
    shared = _opt(cfg, "shared_expert_intermediate_size", 0)
    for key in ("n_shared_experts", "moe_num_shared_experts"):  # DeepSeek / GLM; ERNIE-4.5: one FFN that wide
        if cfg.get(key):
            shared = _opt(cfg, key, 0, maximum=MAX_EXPERTS) * expert_inter
    if model_type.startswith("llama4"):  # one shared expert of the expert width in every MoE layer
        shared = expert_inter
    dense_inter = _opt(cfg, "intermediate_size_mlp", 0) or inter
    windows = _attention_windows(cfg, model_type, layers)
    linear = None
    if LINEAR in windows:
        linear = LinearAttention(*(_int(cfg, k) for k in LINEAR_FIELDS))
    indexer = None
    if model_type in INDEXER_MODEL_TYPES:
        if attn.kind != "mla" or not attn.q_lora_rank:
            raise CapsimError("config.json: field q_lora_rank: the DeepSeek-V3.2 indexer reads the query latent, so "
                              "kv_lora_rank and q_lora_rank must be set")
        n, d, k = (_opt(cfg, key, INDEXER_DEFAULTS[key], minimum=1) for key in INDEXER_DEFAULTS)
        indexer = Indexer(n, d, k, attn.q_lora_rank)
    n_group = _opt(cfg, "n_group", 1, minimum=1, maximum=MAX_EXPERTS) if num_experts else 1
    topk_group = _opt(cfg, "topk_group", 1, minimum=1, maximum=MAX_EXPERTS) if num_experts else 1
    if n_group > 1 and (num_experts % n_group or topk_group > n_group):
        raise CapsimError(f"config.json: fields n_group {n_group} / topk_group {topk_group} do not split the "
                          f"{num_experts} routed experts into groups")
    known_fields.check(cfg, model_type, READ_FIELDS)  # last: the specific refusals above name what they refuse
    return ModelSpec(
        id=model_id,
        model_type=model_type,
        hidden=hidden,
        layers=layers,
        vocab=_int(cfg, "vocab_size"),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", model_type in TIED_BY_DEFAULT_MODEL_TYPES)),
        attention=attn,
        moe_layers=_moe_layer_mask(cfg, layers, num_experts, model_type),
        num_experts=num_experts,
        top_k=_top_k(cfg, num_experts),
        expert_intermediate=expert_inter,
        shared_intermediate=shared,
        dense_intermediate=dense_inter,
        expert_bias=model_type in EXPERT_BIAS_MODEL_TYPES,
        shared_expert_gate=model_type in SHARED_EXPERT_GATE_MODEL_TYPES and bool(shared),
        attention_windows=windows,
        linear_attention=linear,
        router_bias_param=model_type in ROUTER_BIAS_PARAM_MODEL_TYPES and bool(num_experts),
        indexer=indexer,
        n_group=n_group,
        topk_group=topk_group,
        mtp_layers=_mtp_layers(cfg),
    )


def _mtp_layers(cfg: dict[str, Any]) -> int:
    """Multi-token-prediction modules: num_nextn_predict_layers (DeepSeek-V3, GLM-4.5), num_mtp_layers (ERNIE-4.5),
    or MiniMax-M2's use_mtp with num_mtp_modules x mtp_transformer_layers."""
    for key in MTP_FIELDS:
        if cfg.get(key) is not None:
            return _opt(cfg, key, 0, maximum=MAX_LAYERS)
    if cfg.get("use_mtp"):
        return (_opt(cfg, "num_mtp_modules", 1, minimum=1, maximum=MAX_LAYERS)
                * _opt(cfg, "mtp_transformer_layers", 1, minimum=1, maximum=MAX_LAYERS))
    return 0
