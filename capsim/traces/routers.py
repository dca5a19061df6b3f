"""How each transformers MoE router family chooses its experts, as data, and one rule that reproduces it.

Routers that return their indices are recorded as they are; for those that return only logits
(DBRX, Llama-4) :func:`select_experts` applies the family's exact selection. Each family fact
names the transformers class it comes from (v5.23). torch is imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capsim.errors import CapsimError
from capsim.model.spec import _SYNONYMS

# ---------------------------------------------------------------------------------------------------
# Family facts (transformers 5.23 modelling code). One row per router family; the generic
# select_experts() reads these, with the numbers (k, groups, scaling, ...) taken from the config.


@dataclass(frozen=True)
class Family:
    """How one transformers MoE family routes. Config keys are read from the (text) config."""

    router: str  # class of the module hooked in every MoE layer
    returns: str  # what its forward returns: "logits,weights,indices" | "scores,logits" | "logits"
    source: str  # where the selection rule lives in transformers
    score: str = "softmax"  # applied to the router logits before top-k: "softmax" | "sigmoid" | "none"
    score_fp32: bool = True  # scores computed in float32 (else in the logits' dtype)
    bias: bool = False  # module.e_score_correction_bias is added to the scores for the choice only
    groups_if: tuple[str, str] | None = None  # group-limited top-k only when config[key] == value
    group_score: str | None = None  # group-limited top-k: "max" or "top2sum" per group of experts
    group_fill: float = 0.0  # score given to experts of unselected groups
    sorted_topk: bool = True  # torch.topk(sorted=...) as the family calls it (fixes the order of ids)
    post: str = "none"  # applied to the selected values: "softmax" | "sigmoid" | "none"
    norm: bool | str = False  # renormalise the k weights to sum 1: bool, or a config key (bool)
    pnorm: str | None = None  # config key of p: divide the k weights by their p-norm (None: no norm)
    norm_eps: float = 0.0
    scale: str | None = None  # config key of a factor the weights are multiplied by


_LWI = "logits,weights,indices"
FAMILIES: dict[str, Family] = {
    "mixtral": Family("MixtralTopKRouter", _LWI, "MixtralTopKRouter.forward: softmax(fp32), top-k, "
                      "divide by the sum", norm=True),
    "qwen2_moe": Family("Qwen2MoeTopKRouter", _LWI, "Qwen2MoeTopKRouter.forward: softmax(fp32), top-k, "
                        "renormalise if norm_topk_prob", norm="norm_topk_prob"),
    "qwen3_moe": Family("Qwen3MoeTopKRouter", _LWI, "Qwen3MoeTopKRouter.forward: as Qwen2-MoE",
                        norm="norm_topk_prob"),
    "olmoe": Family("OlmoeTopKRouter", _LWI, "OlmoeTopKRouter.forward: as Qwen2-MoE", norm="norm_topk_prob"),
    "deepseek_v2": Family("DeepseekV2TopkRouter", _LWI, "DeepseekV2TopkRouter.forward: softmax(fp32); "
                          "topk_method 'group_limited_greedy' keeps the topk_group groups with the largest "
                          "max score (others 0); top-k unsorted; times routed_scaling_factor (no renorm)",
                          groups_if=("topk_method", "group_limited_greedy"), group_score="max",
                          sorted_topk=False, scale="routed_scaling_factor"),
    "deepseek_v3": Family("DeepseekV3TopkRouter", _LWI, "DeepseekV3TopkRouter.forward: sigmoid(fp32) + "
                          "e_score_correction_bias for the choice; groups ranked by the sum of their top 2; "
                          "top-k unsorted; weights = unbiased sigmoid, renormalised if norm_topk_prob (+1e-20), "
                          "times routed_scaling_factor",
                          score="sigmoid", bias=True, group_score="top2sum", group_fill=float("-inf"),
                          sorted_topk=False, norm="norm_topk_prob", norm_eps=1e-20, scale="routed_scaling_factor"),
    "gpt_oss": Family("GptOssTopKRouter", _LWI, "GptOssTopKRouter.forward: top-k of the logits (with bias), "
                      "softmax over the k values", score="none", score_fp32=False, post="softmax"),
    "llama4_text": Family("Llama4Router", "scores,logits", "Llama4Router.forward: top-k of the logits, "
                          "sigmoid of the k values (returns dense scores, -inf -> 0, and the logits)",
                          score="none", score_fp32=False, post="sigmoid"),
    "dbrx": Family("DbrxRouter", "logits", "DbrxFFN.route_tokens_to_experts: softmax in the logits' dtype, "
                   "top-k, divided by the p-norm, p = ffn_config.moe_normalize_expert_weights",
                   score_fp32=False, pnorm="moe_normalize_expert_weights"),
}
MODEL_TYPE_FAMILY = {"llama4": "llama4_text"}  # Llama-4 checkpoints: the text model (no vision tower)
_NUM_EXPERTS_KEYS = _SYNONYMS["num_experts"]
_TOP_K_KEYS = _SYNONYMS["top_k"]


def _cfg(config: Any, key: str, default: Any = None) -> Any:
    """An attribute of a transformers config, looking into DBRX's nested ffn_config too."""
    for obj in (config, getattr(config, "ffn_config", None)):
        if obj is not None and getattr(obj, key, None) is not None:
            return getattr(obj, key)
    return default


def _first(config: Any, keys: tuple[str, ...]) -> int:
    for k in keys:
        v = _cfg(config, k)
        if v is not None:
            return int(v)
    raise CapsimError(f"model config has none of {', '.join(keys)}")


@dataclass(frozen=True)
class Rule:
    """A family's selection rule with the config's numbers filled in (input to :func:`select_experts`)."""

    top_k: int
    num_experts: int
    score: str
    score_fp32: bool
    bias: bool
    groups: tuple[int, int, str, float] | None  # n_group, topk_group, group_score, fill
    sorted_topk: bool
    post: str
    norm: bool
    pnorm: float | None
    norm_eps: float
    scale: float


def routing_rule(family: str, config: Any) -> Rule:
    f = FAMILIES[family]
    groups = None
    if f.group_score and (f.groups_if is None or _cfg(config, f.groups_if[0]) == f.groups_if[1]):
        groups = (int(_cfg(config, "n_group", 1)), int(_cfg(config, "topk_group", 1)), f.group_score, f.group_fill)
    norm = bool(_cfg(config, f.norm, False)) if isinstance(f.norm, str) else f.norm
    pnorm = _cfg(config, f.pnorm) if f.pnorm else None
    return Rule(
        top_k=_first(config, _TOP_K_KEYS), num_experts=_first(config, _NUM_EXPERTS_KEYS), score=f.score,
        score_fp32=f.score_fp32, bias=f.bias, groups=groups, sorted_topk=f.sorted_topk, post=f.post, norm=norm,
        pnorm=None if pnorm is None else float(pnorm), norm_eps=f.norm_eps,
        scale=float(_cfg(config, f.scale, 1.0)) if f.scale else 1.0,
    )


def select_experts(logits, rule: Rule, bias=None):
    """Reproduce a family's top-k selection from the router logits (tokens, experts) -> (ids, weights).

    The operations and dtypes are those of the transformers class named in :data:`FAMILIES`, so on the
    same logits the ids are identical (ties included) to the ones the model used.
    """
    import torch

    x = logits.float() if rule.score_fp32 else logits
    if rule.score == "softmax":
        scores = torch.nn.functional.softmax(x, dim=-1, dtype=x.dtype)
    elif rule.score == "sigmoid":
        scores = x.sigmoid()
    else:
        scores = x
    choice = scores + bias if (rule.bias and bias is not None) else scores
    if rule.groups is not None:
        n_group, topk_group, how, fill = rule.groups
        per = rule.num_experts // n_group
        grouped = choice.view(-1, n_group, per)
        gscore = grouped.max(dim=-1).values if how == "max" else grouped.topk(2, dim=-1)[0].sum(dim=-1)
        gidx = torch.topk(gscore, k=topk_group, dim=-1, sorted=False)[1]
        gmask = torch.zeros_like(gscore).scatter_(1, gidx, 1)
        emask = gmask.unsqueeze(-1).expand(-1, n_group, per).reshape(-1, rule.num_experts)
        choice = choice.masked_fill(~emask.bool(), fill)
    ids = torch.topk(choice, k=rule.top_k, dim=-1, sorted=rule.sorted_topk)[1]
    w = scores.gather(1, ids)
    if rule.post == "softmax":
        w = torch.nn.functional.softmax(w, dim=1, dtype=w.dtype)
    elif rule.post == "sigmoid":
        w = torch.sigmoid(w.float()).to(w.dtype)
    if rule.norm:
        w = w / (w.sum(dim=-1, keepdim=True) + rule.norm_eps)
    if rule.pnorm is not None:
        w = w / torch.norm(w, p=rule.pnorm, dim=-1, keepdim=True)
    return ids, w * rule.scale
