"""Expert popularity and load imbalance of an expert-routing trace.

Pure numpy; the trace is read in token chunks (:mod:`capsim.traces.arrays`). E experts,
k = top-k, L MoE layers:

* **popularity**: tokens routed to each expert per layer (a token counts once for each of
  its k slots); ``share`` divides by all routed slots of the layer, so it sums to 1.
* **load imbalance**: max / mean tokens per expert of a layer (1 = balanced); for expert
  parallelism over ``ep`` ranks, expert e lives on rank ``e // (E / ep)`` (contiguous blocks)
  and the ratio is max / mean tokens per rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from capsim.traces.arrays import PHASES, TraceLike, as_trace, chunk_tokens, dims

DEFAULT_EP_SIZES = (2, 4, 8)


# ----------------------------------------------------------------------------- popularity


def expert_popularity(trace: TraceLike) -> dict[str, Any]:
    """Tokens routed to each expert per layer, overall and per phase.

    Returns ``{"counts": {"all"|"prefill"|"decode": int64 (L, E)}, "share": {...: float (L, E)},
    "tokens": {...: int}}``; ``share`` rows sum to 1 (0 for a phase without tokens).
    """
    t = as_trace(trace)
    e, layers, _ = dims(t)
    offset = (np.arange(layers, dtype=np.int64) * e)[None, :, None]
    counts = {name: np.zeros(layers * e, np.int64) for name in ("all", "prefill", "decode")}
    tokens = dict.fromkeys(counts, 0)
    for c in t.chunks(chunk_tokens(t)):
        flat = np.asarray(c["expert_ids"]).astype(np.int64) + offset
        phase = np.asarray(c["phase"])
        counts["all"] += np.bincount(flat.ravel(), minlength=layers * e)
        tokens["all"] += len(flat)
        for name, code in PHASES.items():
            sel = phase == code
            if sel.any():
                counts[name] += np.bincount(flat[sel].ravel(), minlength=layers * e)
                tokens[name] += int(sel.sum())
    counts = {name: v.reshape(layers, e) for name, v in counts.items()}
    return {"counts": counts, "share": {name: _share(v) for name, v in counts.items()}, "tokens": tokens}


def _share(counts: np.ndarray) -> np.ndarray:
    tot = counts.sum(-1, keepdims=True)
    return np.divide(counts, tot, out=np.zeros(counts.shape, float), where=tot > 0)


# ----------------------------------------------------------------------------- load imbalance


def default_ep_sizes(num_experts: int, candidates: Iterable[int] = DEFAULT_EP_SIZES) -> list[int]:
    """The expert-parallel sizes among ``candidates`` that divide ``num_experts``."""
    return [ep for ep in candidates if 1 <= ep <= num_experts and num_experts % ep == 0]


def rank_loads(counts: np.ndarray, ep: int) -> np.ndarray:
    """Tokens per EP rank (..., ep) from tokens per expert (..., E); expert e on rank e // (E/ep)."""
    e = counts.shape[-1]
    if ep < 1 or e % ep:
        raise ValueError(f"ep={ep} does not divide {e} experts")
    return counts.reshape(*counts.shape[:-1], ep, e // ep).sum(-1)


def max_over_mean(x: np.ndarray) -> np.ndarray:
    """max / mean along the last axis; NaN where nothing was routed."""
    x = np.asarray(x, float)
    mean = x.mean(-1)
    return np.divide(x.max(-1), mean, out=np.full(mean.shape, np.nan), where=mean > 0)


def _layer_summary(ratio: np.ndarray) -> dict[str, Any]:
    ok = ratio[np.isfinite(ratio)]
    return {"per_layer": ratio, "mean": float(ok.mean()) if ok.size else math.nan,
            "max": float(ok.max()) if ok.size else math.nan,
            "worst_layer": int(np.nanargmax(ratio)) if ok.size else None}


def load_imbalance(counts: np.ndarray, ep_sizes: Iterable[int] = ()) -> dict[str, Any]:
    """Load imbalance from tokens per expert ``counts`` (L, E), e.g. ``expert_popularity(t)["counts"]["decode"]``.

    ``{"experts": {"per_layer": max/mean tokens per expert (L,), "mean", "max", "worst_layer"},
    "ep": {ep: {"per_layer": max/mean tokens per rank (L,), "mean", "max", "worst_layer",
    "rank_tokens": (L, ep)}}}``. Every ``ep`` must divide E (ValueError otherwise).
    """
    counts = np.asarray(counts)
    out: dict[str, Any] = {"experts": _layer_summary(max_over_mean(counts)), "ep": {}}
    for ep in ep_sizes:
        r = rank_loads(counts, int(ep))
        out["ep"][int(ep)] = {**_layer_summary(max_over_mean(r)), "rank_tokens": r}
    return out
