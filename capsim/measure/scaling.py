"""Scale a Hugging Face MoE config.json to a smaller (or larger) shape of the same family and structure.

``capsim measure`` uses it to fit a model's shape to the machine (random initialisation only); the run file
holds the scaled config that was run, and the prediction is made for that same shape.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

from capsim.errors import CapsimError
from capsim.model.spec import _SYNONYMS


def _scopes(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Where a family keeps its shapes: Llama-4's text_config first, the top level, DBRX's sub-configs."""
    out = [cfg["text_config"]] if isinstance(cfg.get("text_config"), dict) else []
    out.append(cfg)
    out += [cfg[k] for k in ("ffn_config", "attn_config") if isinstance(cfg.get(k), dict)]
    return out


def _slot(cfg: dict[str, Any], keys: Iterable[str]) -> tuple[dict[str, Any], str] | None:
    """(sub-dict, key) of the first of ``keys`` set (not None) in the config, looking in every scope."""
    for scope in _scopes(cfg):
        for k in keys:
            if scope.get(k) is not None:
                return scope, k
    return None


def _need(cfg: dict[str, Any], name: str, keys: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    slot = _slot(cfg, keys)
    if slot is None:
        raise CapsimError(f"config.json: cannot scale {name}: none of {'/'.join(keys)} is set")
    return slot


def _positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise CapsimError(f"scaling: {name} is {value!r}, expected a positive integer")


def scale_config(cfg: dict[str, Any], layers: int | None = None, hidden: int | None = None,
                 experts: int | None = None, intermediate: int | None = None, heads: int | None = None,
                 vocab: int | None = None) -> dict[str, Any]:
    """A copy of a Hugging Face config.json dict with a smaller (or larger) shape, same family and structure.

    layers        num_hidden_layers / n_layers; per-layer lists (layer_types, no_rope_layers) are cut to
                  length, mlp_only_layers filtered, and first_k_dense_replace (DeepSeek) kept below the layer
                  count so at least one MoE layer remains.
    hidden        hidden_size / d_model. The head dimensions are kept: the number of attention heads follows
                  hidden / head_dim (GQA) or the hidden ratio (MLA, whose kv_lora_rank and q_lora_rank scale
                  by the same ratio); key-value heads keep their ratio to the heads. FFN widths do not change
                  (use ``intermediate``).
    experts       routed experts (num_local_experts / num_experts / n_routed_experts / moe_num_experts); top-k
                  is capped at the new count, DeepSeek's n_group reduced to a divisor and topk_group capped.
    intermediate  one routed expert's FFN width (moe_intermediate_size, DBRX ffn_hidden_size, else
                  intermediate_size, which is the expert width in Mixtral, OLMoE, GPT-OSS and Llama-4). Where
                  the config has separate dense or shared widths (DeepSeek and Qwen dense layers'
                  intermediate_size, shared_expert_intermediate_size, Llama-4 intermediate_size_mlp) they
                  are scaled by the same ratio; DeepSeek's shared experts follow n_shared_experts x the width.
    heads         attention heads (key-value heads keep their ratio; MLA: as many key-value heads).
    vocab         vocab_size; bos / eos / pad token ids outside the new vocabulary are dropped.
    """
    for name, v in (("layers", layers), ("hidden", hidden), ("experts", experts), ("intermediate", intermediate),
                    ("heads", heads), ("vocab", vocab)):
        _positive(name, v)
    cfg = copy.deepcopy(cfg)
    mla = _slot(cfg, ("kv_lora_rank",)) is not None

    if layers is not None:
        d, k = _need(cfg, "layers", _SYNONYMS["layers"])
        d[k] = layers
        for scope in _scopes(cfg):
            for key in ("layer_types", "no_rope_layers"):
                if isinstance(scope.get(key), list):
                    scope[key] = scope[key][:layers]
            if isinstance(scope.get("mlp_only_layers"), list):
                scope["mlp_only_layers"] = [i for i in scope["mlp_only_layers"] if i < layers]
            if scope.get("first_k_dense_replace") is not None:
                scope["first_k_dense_replace"] = min(int(scope["first_k_dense_replace"]), max(layers - 1, 0))

    if hidden is not None or heads is not None:
        hd, hk = _need(cfg, "hidden", _SYNONYMS["hidden"])
        nd, nk = _need(cfg, "heads", _SYNONYMS["heads"])
        old_hidden, old_heads = int(hd[hk]), int(nd[nk])
        kv = _slot(cfg, ("num_key_value_heads", "kv_n_heads"))
        old_kv = int(kv[0][kv[1]]) if kv else old_heads
        new_hidden = hidden if hidden is not None else old_hidden
        explicit_head_dim = _slot(cfg, ("head_dim",)) is not None
        if heads is not None:
            new_heads = heads
        elif mla:
            new_heads = max(1, round(old_heads * new_hidden / old_hidden))
        else:
            head_dim = int(_slot(cfg, ("head_dim",))[0]["head_dim"]) if explicit_head_dim else old_hidden // old_heads
            new_heads = max(1, new_hidden // head_dim)
        if not mla and not explicit_head_dim and new_hidden % new_heads:
            raise CapsimError(f"scaling: hidden size {new_hidden} is not divisible by {new_heads} attention heads")
        if mla:
            new_kv = new_heads
        else:
            new_kv = max(1, round(new_heads * old_kv / old_heads))
            new_kv = math.gcd(new_heads, new_kv)  # GQA: the heads must split evenly over the key-value heads
        hd[hk], nd[nk] = new_hidden, new_heads
        if kv:
            kv[0][kv[1]] = new_kv
        if mla and hidden is not None:
            ratio = new_hidden / old_hidden
            for key in ("kv_lora_rank", "q_lora_rank"):
                slot = _slot(cfg, (key,))
                if slot:
                    slot[0][key] = max(1, round(int(slot[0][key]) * ratio))

    if experts is not None:
        d, k = _need(cfg, "experts", _SYNONYMS["num_experts"])
        d[k] = experts
        top = _slot(cfg, _SYNONYMS["top_k"])
        if top:
            top[0][top[1]] = min(int(top[0][top[1]]), experts)
            for key in _SYNONYMS["top_k"]:  # GPT-OSS states top-k twice (num_experts_per_tok, experts_per_token)
                slot = _slot(cfg, (key,))
                if slot:
                    slot[0][key] = min(int(slot[0][key]), experts)
        groups = _slot(cfg, ("n_group",))
        if groups and int(groups[0]["n_group"]) > 1:
            # group-limited routing: groups must split the experts evenly, with >= 2 experts each (DeepSeek-V3
            # ranks a group by its top-2 sum), and the kept groups must hold at least top-k experts
            old_g = int(groups[0]["n_group"])
            g = max([d for d in range(1, old_g + 1) if experts % d == 0 and experts // d >= 2] or [1])
            groups[0]["n_group"] = g
            tg = _slot(cfg, ("topk_group",))
            if tg:
                k = int(top[0][top[1]]) if top else 1
                tg[0]["topk_group"] = min(g, max(min(int(tg[0]["topk_group"]), g), math.ceil(k / (experts // g))))

    if intermediate is not None:
        moe = _slot(cfg, _SYNONYMS["expert_intermediate"])
        if moe:  # separate expert width: dense / shared widths scale by the same ratio
            old = int(moe[0][moe[1]])
            moe[0][moe[1]] = intermediate
            for key in ("intermediate_size", "shared_expert_intermediate_size"):
                slot = _slot(cfg, (key,))
                if slot:
                    slot[0][key] = max(1, round(int(slot[0][key]) * intermediate / old))
        else:
            d, k = _need(cfg, "intermediate", ("intermediate_size",))
            old = int(d[k])
            d[k] = intermediate
            slot = _slot(cfg, ("intermediate_size_mlp",))
            if slot:
                slot[0]["intermediate_size_mlp"] = max(1, round(int(slot[0]["intermediate_size_mlp"]) * intermediate / old))

    if vocab is not None:
        d, k = _need(cfg, "vocab", ("vocab_size",))
        d[k] = vocab
        for scope in _scopes(cfg):
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                v = scope.get(key)
                if isinstance(v, list):
                    kept = [i for i in v if i < vocab]
                    scope[key] = kept or None
                elif isinstance(v, int) and v >= vocab:
                    scope[key] = None
    return cfg
