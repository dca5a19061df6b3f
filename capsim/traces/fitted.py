"""A fitted routing model: per-layer expert popularity and per-sequence concentration, for a model whose
routing is known only as counts (or not at all: the prior, :mod:`capsim.traces.prior`).

The generative model, one draw per sequence ``s`` and MoE layer ``l``::

    q[s, l] ~ Dirichlet(c * p[l])          # the sequence's expert shares around the layer's popularity p[l]
    token t of s picks top_k distinct experts with inclusion probabilities k * q[s, l]   (systematic sampling)

``p[l]`` (shares of the top-k selections, summing to 1) is measured for the layers a source counted; a layer it
did not count takes the sorted shares of the nearest counted layer on an expert order of its own (expert ids
carry no meaning across layers). ``c`` (pseudo-selections) says how far one sequence's routing strays from the
layer's: c -> inf, every sequence routes like the corpus; small c, each sequence keeps to few experts. A decode
step takes one token from each of B sequences, so its expected union is sum_e 1 - (1 - k p_e)^B whatever c is;
``c`` shapes prefill (many tokens of one sequence) and the spread.

Systematic sampling (Madow 1949) gives every token exactly k distinct experts with inclusion probability
exactly k q_e (capped at 1), which Gumbel-top-k on q does not (it under-includes popular experts).

A model file (JSON, ``format: capsim-routing-model``, version 1)::

    {"format", "version", "model_id", "num_experts", "top_k", "moe_layers", "kind": "fitted",
     "popularity": {"<MoE layer index, 0-based>": [E shares summing to 1], ...},
     "popularity_tokens": int, "sequence_concentration": float | null, "sequence_concentration_fit": {...},
     "sources": [{"title", "url", "repository", "commit", "path", "licence"}], "caveats": [...]}

``sequence_concentration: null``: the source has no per-sequence data; the prior's value is used (named in
the routing description).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from capsim import checks
from capsim.errors import CapsimError

FORMAT = "capsim-routing-model"
VERSION = 1
SHARE_TOLERANCE = 1e-3  # |sum of a layer's shares - 1| allowed (sources round to 4 decimals)
ORDERS = 16  # random expert orders systematic sampling turns (see systematic_topk)
MAX_CONCENTRATION = 1e9  # pseudo-selections; beyond this every sequence routes like the corpus


@dataclass(frozen=True)
class RoutingModel:
    model_id: str
    num_experts: int
    top_k: int
    moe_layers: int
    kind: str  # "fitted" (counts of a real model) or "prior" (fitted across real models)
    popularity: dict[int, np.ndarray]  # MoE layer -> (E,) shares of the selections
    sequence_concentration: float | None
    meta: dict[str, Any] = field(default_factory=dict)  # sources, caveats, fit details (copied to the trace)


def load(path: str | Path) -> RoutingModel:
    """A routing model file, every field checked (one-line CapsimError naming the file and field)."""
    data = checks.mapping(checks.read_json(path, "routing model"), f"{path}")
    where = f"{path}"
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise CapsimError(f"{where}: not a capsim routing model (format {FORMAT!r} version {VERSION} expected)")
    e = checks.integer(data.get("num_experts"), f"{where}: num_experts", low=2, high=checks.MAX_EXPERTS)
    k = checks.integer(data.get("top_k"), f"{where}: top_k", low=1, high=e)
    layers = checks.integer(data.get("moe_layers"), f"{where}: moe_layers", low=1, high=checks.MAX_LAYERS)
    pop = {}
    for key, shares in checks.mapping(data.get("popularity"), f"{where}: popularity").items():
        if not str(key).isdigit() or int(key) >= layers:
            raise CapsimError(f"{where}: popularity key {key!r}: expected a MoE layer index below {layers}")
        p = np.asarray(shares, dtype=float) if isinstance(shares, list) else np.zeros(0)
        if p.shape != (e,) or not np.all(np.isfinite(p)) or np.any(p < 0) or abs(p.sum() - 1) > SHARE_TOLERANCE:
            raise CapsimError(f"{where}: popularity[{key}]: expected {e} non-negative shares summing to 1")
        pop[int(key)] = p / p.sum()
    if not pop:
        raise CapsimError(f"{where}: popularity: no layer")
    c = data.get("sequence_concentration")
    if c is not None:
        c = checks.number(c, f"{where}: sequence_concentration", low=1e-9, high=MAX_CONCENTRATION)
    meta = {key: data[key] for key in ("sources", "caveats", "sequence_concentration_fit", "popularity_tokens",
                                       "domains_used") if key in data}
    return RoutingModel(str(data.get("model_id", "")), e, k, layers, str(data.get("kind", "fitted")), pop, c, meta)


def to_json(m: RoutingModel) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "model_id": m.model_id, "num_experts": m.num_experts,
            "top_k": m.top_k, "moe_layers": m.moe_layers, "kind": m.kind,
            "sequence_concentration": m.sequence_concentration, **m.meta,
            "popularity": {str(k): [round(float(x), 6) for x in v] for k, v in sorted(m.popularity.items())}}


def save(path: str | Path, m: RoutingModel) -> Path:
    from capsim import atomic

    path = Path(path)
    atomic.write_text(path, json.dumps(to_json(m), indent=1) + "\n")
    return path


# ----------------------------------------------------------------------------------------------- fitting
def fit_concentration(counts: np.ndarray) -> float:
    """Method-of-moments Dirichlet concentration c from per-sequence selection counts (S, E) of one layer.

    Observed shares f_s = counts_s / n_s (n_s selections) vary between sequences by the Dirichlet's
    Var(q_e) = p_e (1 - p_e) / (c + 1) plus the sampling noise of n_s selections, E[q_e (1 - q_e)] / n_s
    (multinomial; the k distinct picks of a token make it slightly smaller: c is then slightly underestimated,
    i.e. sequences look a little more concentrated). Summed over experts:
        sum_e Var_s(f_e) = (1 - sum_e p_e^2) (1/(c+1) + mean_s(1/n_s) c/(c+1))
    solved for c. Returns MAX_CONCENTRATION when the spread is no larger than the sampling noise."""
    counts = np.asarray(counts, dtype=float)
    n = counts.sum(axis=1)
    counts, n = counts[n > 0], n[n > 0]
    if len(n) < 2:
        raise ValueError("fit_concentration needs at least two sequences with selections")
    f = counts / n[:, None]
    p = counts.sum(axis=0) / n.sum()
    spread = float(np.sum(f.var(axis=0, ddof=1)))
    g = 1.0 - float(np.sum(p * p))
    inv_n = float(np.mean(1.0 / n))
    # spread / g = (1 + inv_n c) / (c + 1)  =>  c = (1 - r) / (r - inv_n), r = spread / g
    r = spread / g if g > 0 else 0.0
    if r <= inv_n:
        return MAX_CONCENTRATION
    return float(min(MAX_CONCENTRATION, max(1e-9, (1.0 - r) / (r - inv_n))))


# ---------------------------------------------------------------------------------------------- sampling
def layer_popularity(m: RoutingModel, seed: int = 0) -> np.ndarray:
    """(moe_layers, E) shares: measured layers as measured; any other layer the sorted shares of the nearest
    measured layer (the lower one on a tie) on an expert order drawn for that layer."""
    rng = np.random.default_rng(seed)
    measured = np.array(sorted(m.popularity))
    out = np.empty((m.moe_layers, m.num_experts))
    for layer in range(m.moe_layers):
        if layer in m.popularity:
            out[layer] = m.popularity[layer]
            continue
        near = int(measured[np.argmin(np.abs(measured - layer))])
        out[layer] = np.sort(m.popularity[near])[::-1][rng.permutation(m.num_experts)]
    return out


def inclusion(q: np.ndarray, k: int) -> np.ndarray:
    """Inclusion probabilities k q capped at 1, the excess given to the uncapped experts (sums to k)."""
    pi = np.asarray(q, dtype=float) * k
    for _ in range(k + 1):  # each pass caps at least one more expert, at most k can reach 1
        over = pi > 1.0
        if not over.any():
            break
        free = ~over & (pi < 1.0)
        excess = (pi - 1.0).clip(min=0).sum(axis=-1, keepdims=True)
        pi = np.minimum(pi, 1.0)
        mass = np.where(free, pi, 0.0).sum(axis=-1, keepdims=True)
        pi = np.where(free, pi * (1.0 + excess / np.where(mass > 0, mass, 1.0)), pi)
    return pi


def systematic_topk(pi: np.ndarray, row: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each token, k distinct experts drawn with inclusion probabilities exactly ``pi[row[t]]`` (``pi``:
    (rows, E), each row summing to k). Systematic sampling: the experts are laid end to end in an order (their
    pi as lengths, wrapping round at k) and the ones under u, u+1, ..., u+k-1 are taken (u uniform in [0, 1)).
    The order is one of ORDERS random permutations started at a random expert, so each token costs k binary
    searches in its (row, permutation)'s cumulative sums, not a shuffle of E. Marginals are exact; which pairs
    a token co-selects does not change the union over many tokens. Returns (tokens, k) expert ids."""
    rows, e = pi.shape
    k = int(round(float(pi[0].sum())))
    perms = np.argsort(rng.random((ORDERS, e)), axis=1)
    ends = np.cumsum(pi[:, perms], axis=2)  # (rows, ORDERS, E) cumulative lengths in each order
    ends[..., -1] = k  # rounding: the last end is exactly k
    tokens = len(row)
    which = row * ORDERS + rng.integers(ORDERS, size=tokens)  # the token's (row, order)
    first = rng.integers(e, size=tokens)  # it starts at this position of the order
    flat = ends.reshape(-1, e)
    start = np.where(first > 0, flat[which, first - 1], 0.0)
    marks = (start[:, None] + rng.random((tokens, 1)) + np.arange(k)[None, :]) % k
    shift = (which * (k + 1.0))[:, None]  # the (row, order) sums end to end on one increasing axis
    pos = np.searchsorted((flat + (np.arange(len(flat)) * (k + 1.0))[:, None]).ravel(), (marks + shift).ravel(),
                          side="right").reshape(tokens, k) - (which * e)[:, None]
    return perms[(which % ORDERS)[:, None], np.clip(pos, 0, e - 1)]


def sample_trace(m: RoutingModel, *, sequences: int, prompt_len: int, decode_len: int, seed: int = 0,
                 concentration: float | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and meta of a synthetic token-level trace drawn from the model (``concentration`` replaces a
    missing ``sequence_concentration``)."""
    from capsim.traces.synthetic import layout

    c = m.sequence_concentration if m.sequence_concentration is not None else concentration
    if c is None:
        raise CapsimError(f"routing model of {m.model_id}: no sequence concentration")
    rng = np.random.default_rng(seed)
    pop = layer_popularity(m, seed)
    per = prompt_len + decode_len
    ids = np.empty((sequences * per, m.moe_layers, m.top_k), np.uint8 if m.num_experts <= 256 else np.uint16)
    for layer in range(m.moe_layers):  # all sequences of a layer at once
        if c < MAX_CONCENTRATION:
            q = rng.gamma(np.maximum(c * pop[layer], 1e-12), size=(sequences, m.num_experts))
            total = q.sum(axis=1, keepdims=True)
            q = np.where(total > 0, q / np.where(total > 0, total, 1.0), pop[layer])
        else:
            q = np.broadcast_to(pop[layer], (sequences, m.num_experts))
        ids[:, layer] = systematic_topk(inclusion(q, m.top_k), np.repeat(np.arange(sequences), per), rng)
    arrays = {"expert_ids": ids, "weights": np.full(ids.shape, 1.0 / m.top_k, np.float16),
              **layout(sequences, prompt_len, decode_len)}
    meta = {"model_id": m.model_id, "num_experts": m.num_experts, "top_k": m.top_k, "synthetic": True,
            "provenance": {"kind": f"drawn from a {m.kind} routing model", "sequence_concentration": c,
                           "seed": seed, **m.meta}}
    return arrays, meta
