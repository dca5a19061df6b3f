"""Reading a Hugging Face config.json: key synonyms, checked integer fields, the per-layer attention span and
MoE/dense layer pattern, and the fields capsim refuses because it does not model what they describe.

Pure Python (no torch). :func:`capsim.model.spec.spec_from_config` builds the ModelSpec from these readers.
"""

from __future__ import annotations

from typing import Any

from capsim import checks
from capsim.checks import MAX_LAYERS, MAX_WIDTH
from capsim.errors import CapsimError
from capsim.model.mixers import LINEAR

_SYNONYMS: dict[str, tuple[str, ...]] = {
    "num_experts": ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"),
    "top_k": ("num_experts_per_tok", "experts_per_token", "moe_top_k", "moe_k"),  # ERNIE-4.5: moe_k
    # OLMoE has no moe_intermediate_size: its intermediate_size is the expert width (OlmoeExperts).
    "expert_intermediate": ("moe_intermediate_size", "ffn_hidden_size"),  # DBRX: ffn_config.ffn_hidden_size
    "layers": ("num_hidden_layers", "n_layers"),
    "hidden": ("hidden_size", "d_model"),
    "heads": ("num_attention_heads", "n_heads"),
}

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
# Qwen3-Next's Gated DeltaNet layers are modelled (LinearAttention); the others are refused.
UNMODELLED_FIELDS = ("attn_type_list", "layers_block_type", "hybrid_override_pattern", "attn_layer_period",
                     "mamba_d_state", "ssm_state_size", "mamba_expand")
LINEAR_FIELDS = ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
                 "linear_conv_kernel_dim")
ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention", "linear_attention",
                         "indexed_attention")  # DeepseekV32Config: every layer MLA + indexer (ModelSpec.indexer)


# A field a transformers class reads (or a checkpoint carries) that changes a weight shape capsim does not build
# for that model type: refused by name rather than priced as something else. (field, model types that may carry
# it, what it is)
INDEXER_FIELDS = ("index_n_heads", "index_head_dim", "index_topk")
INDEXER_MODEL_TYPES = {"deepseek_v32"}


def _refuse_unmodelled(cfg: dict[str, Any], model_type: str = "") -> None:
    found = [k for k in UNMODELLED_FIELDS if cfg.get(k) is not None]
    if model_type == "minimax_m2" and "attn_type_list" in found:
        # MiniMax's attention-type list: 1 = softmax attention, 0 = lightning (linear) attention (MiniMax-Text-01).
        # MiniMax-M2's list is all 1 (full attention everywhere), which MiniMaxM2Attention builds.
        types = cfg["attn_type_list"]
        if isinstance(types, list) and types and all(t == 1 for t in types):
            found.remove("attn_type_list")
    if found:
        raise CapsimError(f"config.json: field(s) {', '.join(found)} describe linear-attention or state-space "
                          "layers, which capsim does not model (it models softmax attention only)")
    wrong = [k for k in INDEXER_FIELDS if cfg.get(k) is not None and model_type not in INDEXER_MODEL_TYPES]
    if wrong:
        raise CapsimError(f"config.json: field(s) {', '.join(wrong)} describe a sparse-attention indexer, which "
                          f"capsim models for model_type {', '.join(sorted(INDEXER_MODEL_TYPES))} only, not "
                          f"{model_type or 'this config'}")
    if model_type == "ernie4_5_moe" and cfg.get("use_bias"):
        raise CapsimError("config.json: field use_bias true (biases on every ERNIE-4.5 projection and the lm_head) "
                          "is not modelled")
    if model_type == "minimax_m2":
        # MiniMaxM2Attention: q_norm / k_norm over the whole projection width, always; MiniMaxM2SparseMoeBlock: no
        # shared expert. A config asking for something else describes weights that class does not build.
        if cfg.get("shared_intermediate_size"):
            raise CapsimError("config.json: field shared_intermediate_size: a MiniMax-M2 shared expert is not "
                              "modelled (MiniMaxM2SparseMoeBlock has none)")
        if cfg.get("use_qk_norm") is False or cfg.get("qk_norm_type", "per_layer") != "per_layer":
            raise CapsimError("config.json: field use_qk_norm / qk_norm_type: MiniMax-M2 is modelled with one q/k "
                              "norm over the whole projection width (qk_norm_type per_layer) only")


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
    if types is None and cfg.get("full_attention_interval") is not None:  # Qwen3NextConfig builds them so
        every = _opt(cfg, "full_attention_interval", 4, minimum=1, maximum=MAX_LAYERS)
        types = ["linear_attention" if (i + 1) % every else "full_attention" for i in range(layers)]
    if types is not None:
        if not isinstance(types, list) or len(types) != layers:
            got = f"{len(types)} entries" if isinstance(types, list) else repr(types)
            raise CapsimError(f"config.json: field layer_types is {got}, expected a list of one entry per layer "
                              f"({layers})")
        known = set(ATTENTION_LAYER_TYPES) - ({"indexed_attention"} if model_type not in INDEXER_MODEL_TYPES else set())
        unknown = sorted({str(t) for t in types} - known)
        if unknown:
            raise CapsimError(f"config.json: field layer_types: {', '.join(unknown)} layers are not modelled "
                              f"(capsim models {', '.join(ATTENTION_LAYER_TYPES)})")
    if not types and chunk and model_type.startswith("llama4"):
        nope = _int_list(cfg, "no_rope_layers", layers, maximum=1) or [
            int((i + 1) % LLAMA4_NOPE_INTERVAL != 0) for i in range(layers)]
        types = ["chunked_attention" if rope else "full_attention" for rope in nope]
    if types and "linear_attention" in types and any(cfg.get(k) is None for k in LINEAR_FIELDS):
        missing = [k for k in LINEAR_FIELDS if cfg.get(k) is None]
        what = "layer_types" if cfg.get("layer_types") is not None else "full_attention_interval"
        raise CapsimError(f"config.json: field {what} makes linear_attention layers but field(s) "
                          f"{', '.join(missing)} are missing")
    given = [k for k in LINEAR_FIELDS if cfg.get(k) is not None]
    if given and not (types and "linear_attention" in types):
        raise CapsimError(f"config.json: field(s) {', '.join(given)} describe linear-attention layers but no layer "
                          "is linear_attention (layer_types / full_attention_interval)")
    if types:
        spans = {"sliding_attention": window, "chunked_attention": chunk, "linear_attention": LINEAR}
        out = tuple(spans.get(t, 0) for t in types)
        return out if any(out) else ()
    return (window,) * layers if window else ()


# first_k_dense_replace when the config leaves it out: the transformers config class default (v5).
FIRST_DENSE_DEFAULTS = {"deepseek_v3": 3, "deepseek_v32": 3, "glm4_moe": 1}


def _moe_layer_mask(cfg: dict[str, Any], layers: int, num_experts: int, model_type: str = "") -> tuple[bool, ...]:
    if not num_experts:
        return (False,) * layers
    if model_type == "deepseek_v32" and cfg.get("mlp_layer_types") is not None:  # DeepseekV32Config: per layer
        kinds = cfg["mlp_layer_types"]
        if not isinstance(kinds, list) or len(kinds) != layers or not set(kinds) <= {"dense", "sparse"}:
            raise CapsimError(f"config.json: field mlp_layer_types is {kinds!r}, expected one of dense / sparse "
                              f"per layer ({layers})")
        return tuple(k == "sparse" for k in kinds)
    first_dense = _opt(cfg, "first_k_dense_replace", FIRST_DENSE_DEFAULTS.get(model_type, 0), maximum=MAX_LAYERS)
    flags = None  # moe_layer_freq given as one 0/1 flag per layer
    if isinstance(cfg.get("moe_layer_freq"), list):
        flags, freq = _int_list(cfg, "moe_layer_freq", layers, maximum=1), 1
    else:
        freq = _opt(cfg, "moe_layer_freq", 1, minimum=1, maximum=MAX_LAYERS)
    step = _opt(cfg, "decoder_sparse_step", 1, minimum=1, maximum=MAX_LAYERS)  # Qwen2-MoE / Qwen3-MoE
    mlp_only = set(_int_list(cfg, "mlp_only_layers", maximum=MAX_LAYERS))
    interleave = _opt(cfg, "interleave_moe_layer_step", 1, minimum=1, maximum=MAX_LAYERS)  # Llama-4: every n-th
    # ERNIE-4.5 (Ernie4_5_MoeDecoderLayer): MoE where (i + 1) % moe_layer_interval == 0 and
    # moe_layer_start_index <= i <= moe_layer_end_index (-1: the last layer); the class defaults are 1 / -1 / 1.
    ernie = model_type == "ernie4_5_moe"
    start = _opt(cfg, "moe_layer_start_index", 1 if ernie else 0, maximum=MAX_LAYERS)
    end_raw = cfg.get("moe_layer_end_index", -1)
    end = layers - 1 if end_raw in (None, -1) else _opt(cfg, "moe_layer_end_index", 0, maximum=MAX_LAYERS)
    every = _opt(cfg, "moe_layer_interval", 1, minimum=1, maximum=MAX_LAYERS)
    mask = []
    for i in range(layers):  # layers <= MAX_LAYERS (checked where read)
        moe = i >= first_dense and i % freq == 0 and (i + 1) % step == 0 and i not in mlp_only
        moe = moe and (i + 1) % interleave == 0 and (flags is None or flags[i] == 1)
        moe = moe and start <= i <= end and (i + 1) % every == 0
        mask.append(moe)
    return tuple(mask)


def _top_k(cfg: dict[str, Any], num_experts: int) -> int:
    if not num_experts:
        return 0
    k = _int(cfg, "top_k")
    if k > num_experts:
        raise CapsimError(f"config.json: top-k {k} exceeds the {num_experts} routed experts")
    return k


# Every field the reader above consults, for any model type: these are known wherever they appear
# (capsim.model.known_fields); the per-type lists come from the transformers config classes.
READ_FIELDS = tuple(sorted({
    *(k for keys in _SYNONYMS.values() for k in keys), *UNMODELLED_FIELDS, *LINEAR_FIELDS, *INDEXER_FIELDS,
    "attention_bias", "attention_chunk_size", "decoder_sparse_step", "first_k_dense_replace",
    "full_attention_interval", "head_dim", "intermediate_size", "intermediate_size_mlp", "interleave_moe_layer_step",
    "kv_lora_rank", "kv_n_heads", "layer_types", "mlp_layer_types", "mlp_only_layers", "moe_layer_end_index",
    "moe_layer_freq", "moe_layer_interval", "moe_layer_start_index", "mtp_transformer_layers", "n_group",
    "n_shared_experts", "no_rope_layers", "num_key_value_heads", "num_mtp_modules", "q_lora_rank",
    "qk_nope_head_dim", "qk_norm_type", "qk_rope_head_dim", "shared_expert_intermediate_size",
    "shared_intermediate_size", "sliding_window", "tie_word_embeddings", "topk_group", "use_bias", "use_mtp",
    "use_qk_norm", "use_sliding_window", "v_head_dim", "vocab_size", "moe_num_shared_experts",
    "num_nextn_predict_layers", "num_mtp_layers", "torch_dtype", "dtype", "quantization_config",
}))

