"""The summary of an expert-routing trace: popularity, load imbalance, activated experts, affinity.

:func:`summary` runs every statistic on one trace and returns a JSON-serialisable dict
(:func:`jsonable`: plain Python types, NaN as None). The statistics live in their own modules,
each with its definitions (E experts, k = top-k, L MoE layers):

* :mod:`capsim.traces.popularity`: expert popularity (tokens routed to each expert per layer)
  and load imbalance (max / mean tokens per expert, or per EP rank, expert e on rank
  ``e // (E / ep)``);
* :mod:`capsim.traces.activated`: distinct experts activated per layer vs batch size (MoE-CAP's
  A) and the load imbalance inside one decode step, on sampled batches;
* :mod:`capsim.traces.affinity`: cross-layer affinity (mutual information between the experts
  of consecutive layers);
* :mod:`capsim.traces.arrays`: chunked reading of a trace, and :func:`from_arrays` (an
  in-memory trace from a dict of arrays).

Those functions are imported here too, so ``stats.<name>`` keeps working.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from capsim.traces.activated import DEFAULT_BATCH_SIZES, activated_experts_curve, decode_step_imbalance
from capsim.traces.affinity import affinity_counts, conditional_probabilities, cross_layer_affinity
from capsim.traces.arrays import PHASES, TraceLike, as_trace, dims, from_arrays
from capsim.traces.popularity import (
    DEFAULT_EP_SIZES,
    default_ep_sizes,
    expert_popularity,
    load_imbalance,
    rank_loads,
)

__all__ = [
    "DEFAULT_BATCH_SIZES", "DEFAULT_EP_SIZES", "PHASES", "TraceLike", "activated_experts_curve",
    "affinity_counts", "conditional_probabilities", "cross_layer_affinity", "decode_step_imbalance",
    "default_ep_sizes", "expert_popularity", "from_arrays", "jsonable", "load_imbalance", "rank_loads",
    "summary",
]


def jsonable(obj: Any) -> Any:
    """Plain Python types for JSON: arrays to lists, numpy scalars to int/float, NaN/inf to None."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def summary(trace: TraceLike, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, samples: int = 200,
            seed: int = 0, ep_sizes: Iterable[int] | None = None) -> dict[str, Any]:
    """Every statistic of the trace in one JSON-serialisable dict (plain Python types, NaN as None).

    ``ep_sizes`` defaults to those of 2, 4, 8 that divide E.
    """
    t = as_trace(trace)
    e, layers, k = dims(t)
    ep_sizes = default_ep_sizes(e) if ep_sizes is None else [int(x) for x in ep_sizes]
    pop = expert_popularity(t)
    meta = t.meta
    info = {
        "path": str(t.path), "model_id": meta.get("model_id"), "num_experts": e, "top_k": k,
        "moe_layers": layers, "tokens": len(t), "prefill_tokens": pop["tokens"]["prefill"],
        "decode_tokens": pop["tokens"]["decode"], "sequences": meta.get("sequences"),
        "synthetic": meta.get("synthetic"), "synthetic_spec": meta.get("synthetic_spec"),
    }
    share = pop["share"]["all"]
    popularity = {
        "counts": pop["counts"], "share": pop["share"],
        "top_share_mean": float(share.max(-1).mean()) if layers else math.nan,  # hottest expert's share, mean over layers
        "experts_never_used": int((pop["counts"]["all"] == 0).sum()),
    }
    imbalance = {name: load_imbalance(pop["counts"][name], ep_sizes) for name in ("all", "prefill", "decode")}
    curves = {name: activated_experts_curve(t, batch_sizes, name, samples, seed) for name in PHASES}
    steps = decode_step_imbalance(t, batch_sizes, ep_sizes, samples, seed)
    out = {"trace": info, "popularity": popularity, "load_imbalance": imbalance,
           "decode_step_imbalance": steps, "activated_experts": curves,
           "affinity": cross_layer_affinity(t), "ep_sizes": ep_sizes, "samples": samples, "seed": seed}
    return jsonable(out)
