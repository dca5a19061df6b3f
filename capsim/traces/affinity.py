"""Cross-layer affinity of an expert-routing trace: how much layer l's routing predicts layer l+1's.

Pure numpy; the trace is read in token chunks (:mod:`capsim.traces.arrays`). E experts,
k = top-k, L MoE layers. Each token contributes its k x k (expert at l, expert at l+1) slot
pairs to the joint counts C (L-1, E, E) of :func:`affinity_counts`; with P(i, j) the joint
distribution and p(i), q(j) its marginals, :func:`cross_layer_affinity` reports per layer pair
the mutual information sum P(i,j) log2(P(i,j) / (p(i) q(j))) in bits, its normalised form
mi / min(H(p), H(q)), the lift P(i*, j*) / (p(i*) q(j*)) of the most frequent pair and the
estimator's noise floor (r_p - 1)(r_q - 1) / (2 N ln 2).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from capsim.traces.arrays import TraceLike, as_trace, chunk_tokens, dims


def affinity_counts(trace: TraceLike) -> np.ndarray:
    """Joint counts C (L-1, E, E): C[l, i, j] = number of (token, slot at l, slot at l+1) with
    expert i at layer l and expert j at layer l+1 (each token contributes its k x k pairs)."""
    t = as_trace(trace)
    e, layers, k = dims(t)
    out = np.zeros((max(0, layers - 1), e * e), np.int64)
    for c in t.chunks(chunk_tokens(t, layers * k * k)):
        ids = np.asarray(c["expert_ids"]).astype(np.int64)
        for layer in range(layers - 1):
            pair = ids[:, layer, :, None] * e + ids[:, layer + 1, None, :]
            out[layer] += np.bincount(pair.ravel(), minlength=e * e)
    return out.reshape(-1, e, e)


def conditional_probabilities(joint: np.ndarray) -> np.ndarray:
    """P(expert j at layer l+1 | expert i at layer l) from joint counts (..., E, E); rows of
    experts never chosen at layer l are 0."""
    joint = np.asarray(joint, float)
    rows = joint.sum(-1, keepdims=True)
    return np.divide(joint, rows, out=np.zeros(joint.shape), where=rows > 0)


def _entropy_bits(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def cross_layer_affinity(trace: TraceLike, joint: np.ndarray | None = None) -> dict[str, Any]:
    """How much layer l's routing predicts layer l+1's, one number per consecutive layer pair.

    From the joint counts of :func:`affinity_counts` (all k x k slot pairs of every token),
    P(i, j) is the joint distribution, p(i) and q(j) its marginals:

    * ``mi_bits``: mutual information sum P(i,j) log2(P(i,j) / (p(i) q(j))) in bits; 0 when
      layer l+1's experts are independent of layer l's, log2(E) at most (top-1, each expert
      at l+1 a function of the one at l, uniform popularity);
    * ``nmi``: mi_bits / min(H(p), H(q)) in [0, 1] (1: one layer's expert determines the other's
      for top-1 routing; with top-k > 1 the k x k cross pairs keep it below 1);
    * ``top_lift``: for the most frequent pair (i*, j*), P(i*, j*) / (p(i*) q(j*)): how many times
      more often than independence the most common transition happens;
    * ``mi_noise_bits``: the plug-in estimator's bias, i.e. roughly the MI that independent
      routing shows on this many tokens: (r_p - 1)(r_q - 1) / (2 N ln 2), r the experts used
      and N the slot pairs (tokens x k^2). MI near this value means "no measurable affinity".

    Returns per-pair arrays (L-1,) for these and ``top_pair`` (L-1, 2), plus their means over
    pairs (``mean_mi_bits``, ``mean_nmi``, ``mean_top_lift``).
    """
    t = as_trace(trace)
    joint = affinity_counts(t) if joint is None else np.asarray(joint)
    pairs = len(joint)
    keys = ("mi_bits", "nmi", "top_lift", "mi_noise_bits")
    out: dict[str, Any] = {key: np.full(pairs, np.nan) for key in keys}
    out["top_pair"] = np.zeros((pairs, 2), np.int64)
    for layer, c in enumerate(joint):
        n = c.sum()
        if n == 0:
            continue
        pj = c / n
        p, q = pj.sum(1), pj.sum(0)
        nz = pj > 0
        indep = np.outer(p, q)
        mi = max(0.0, float((pj[nz] * np.log2(pj[nz] / indep[nz])).sum()))
        h = min(_entropy_bits(p), _entropy_bits(q))
        i, j = np.unravel_index(int(np.argmax(c)), c.shape)
        out["mi_bits"][layer] = mi
        out["nmi"][layer] = mi / h if h > 0 else 0.0
        out["top_lift"][layer] = pj[i, j] / indep[i, j]
        out["mi_noise_bits"][layer] = ((np.count_nonzero(p) - 1) * (np.count_nonzero(q) - 1)
                                       / (2 * n * math.log(2)))
        out["top_pair"][layer] = (i, j)
    for key in ("mi_bits", "nmi", "top_lift"):
        v = out[key][np.isfinite(out[key])]
        out[f"mean_{key}"] = float(v.mean()) if v.size else math.nan
    return out
