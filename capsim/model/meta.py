"""Exact parameter counts from the real transformers model class on torch's meta device.

Imports torch and transformers: never imported by the prediction path. Used to
check :func:`capsim.model.spec.spec_from_config` in the tests.
"""

from __future__ import annotations

import re
from typing import Any

from capsim.model.spec import ALIASED_MODEL_TYPES

# Parameter name -> component, first match wins (names as transformers v5 defines them).
_COMPONENTS = (
    ("embedding", re.compile(r"embed_tokens|\.wte\.")),
    ("lm_head", re.compile(r"^lm_head\.")),
    ("attention", re.compile(r"\.indexer\.")),  # DeepSeek-V3.2's indexer, k_norm included: part of attention
    ("norms", re.compile(r"(layernorm|norm)\.weight$|\.norm\.weight$|norm_[12f]\.weight$")),  # DBRX: norm_1, norm_2, norm_f
    ("attention", re.compile(r"self_attn\.|\.attn\.|norm_attn_norm\.attn|\.linear_attn\.")),
    ("shared_experts", re.compile(r"shared_expert")),
    ("routed_experts", re.compile(r"\.experts\.")),
    # ERNIE-4.5: gate.moe_statics.e_score_correction_bias is a router parameter
    ("router", re.compile(r"\.(gate|router)\.(weight|bias)$|\.router\.layer\.weight$|\.moe_statics\.")),
    ("dense_ffn", re.compile(r"\.mlp\.|feed_forward\.")),
)


def meta_model(config: dict[str, Any]):
    """The transformers causal-LM class for ``config``, built on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    cfg["model_type"] = ALIASED_MODEL_TYPES.get(cfg.get("model_type", ""), cfg.get("model_type"))
    cfg.pop("quantization_config", None)  # count logical weights; storage format is a precision choice
    hf_config = AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config)


def meta_breakdown(config: dict[str, Any]) -> dict[str, int]:
    """Parameters by component, counted from the instantiated model's named parameters."""
    model = meta_model(config)
    out: dict[str, int] = {name: 0 for name, _ in _COMPONENTS}
    for name, p in model.named_parameters():
        for comp, pattern in _COMPONENTS:
            if pattern.search(name):
                out[comp] += p.numel()
                break
        else:
            raise ValueError(f"parameter {name!r} fits no component")
    return out
