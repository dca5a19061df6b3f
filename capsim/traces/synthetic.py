"""Synthetic routing traces (uniform, Zipf, Zipf fitted to a measured activated-expert count).

Each generator returns ``(arrays, meta)`` for :func:`capsim.traces.format.write_trace`; the
meta always says ``synthetic: True`` and ``synthetic_spec`` records the generator and its
parameters, so a synthetic trace can never pass for a measured one.

Layout: tokens are ordered sequence by sequence; each sequence has ``prompt_len`` prefill
tokens (positions 0..P-1, phase 0) then ``decode_len`` decode tokens (positions P..P+D-1,
phase 1). Every token is routed independently of every other (no correlation within a
sequence or across layers, unlike a real model).

Routing: per layer, expert popularity is p_e proportional to rank(e)^-s, with the ranks a random
permutation per layer (s = 0 is uniform). A token's top-k experts are drawn without
replacement proportionally to p (Plackett-Luce) with the Gumbel-top-k trick: the k largest of
log p_e + Gumbel noise. ``weights`` are the softmax of those perturbed logits over the k chosen
experts, sorted in decreasing order like a router's top-k (stand-ins: the stats ignore them).

Fitting: with tokens independent, the expected number of distinct experts a batch of B tokens
activates in a layer is exactly sum_e 1 - (1 - q_e)^B, where q_e = P(e is in a token's top-k).
q_e has no simple closed form under sampling without replacement; it is estimated by Monte
Carlo (``FIT_SAMPLES`` tokens, fixed seed ``FIT_SEED``, the same noise for every s so that the
estimate is a deterministic, monotone function of s), and s is found with
``scipy.optimize.brentq``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import brentq

from capsim.sim.experts import expected_activated
from capsim.traces.format import DECODE, PREFILL

KINDS = ("uniform", "zipf", "fitted")
FIT_SAMPLES = 50_000
FIT_SEED = 20241207
MAX_S = 64.0
_CHUNK_FLOATS = 1 << 22


# ----------------------------------------------------------------------------- routing


def zipf_popularity(num_experts: int, s: float, layers: int, rng: np.random.Generator) -> np.ndarray:
    """(layers, E) probabilities p_e proportional to rank^-s, ranks a random permutation per layer."""
    ranks = np.argsort(rng.random((layers, num_experts)), axis=-1) + 1  # a permutation of 1..E per layer
    w = ranks.astype(float) ** -float(s)
    return w / w.sum(-1, keepdims=True)


def _gumbel(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard Gumbel noise, float32 (-log of an exponential, kept away from 0)."""
    x = rng.standard_exponential(shape, dtype=np.float32)
    return -np.log(np.maximum(x, np.finfo(np.float32).tiny, out=x), out=x)


def _topk(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest keys along the last axis, sorted in decreasing order."""
    if k < keys.shape[-1]:
        idx = np.argpartition(-keys, k - 1, axis=-1)[..., :k]
    else:
        idx = np.broadcast_to(np.arange(keys.shape[-1]), keys.shape).copy()
    val = np.take_along_axis(keys, idx, -1)
    order = np.argsort(-val, axis=-1, kind="stable")
    return np.take_along_axis(idx, order, -1), np.take_along_axis(val, order, -1)


def sample_routing(popularity: np.ndarray, tokens: int, top_k: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gumbel-top-k routing of ``tokens`` tokens: (expert_ids (tokens, L, k), weights float16)."""
    layers, e = popularity.shape
    dtype = np.uint8 if e <= 256 else np.uint16
    ids = np.empty((tokens, layers, top_k), dtype)
    weights = np.empty((tokens, layers, top_k), np.float16)
    with np.errstate(divide="ignore"):
        logp = np.log(popularity).astype(np.float32)
    step = max(1, _CHUNK_FLOATS // (layers * e))
    for start in range(0, tokens, step):
        n = min(step, tokens - start)
        gumbel = _gumbel(rng, (n, layers, e))
        idx, val = _topk(logp[None] + gumbel, top_k)
        w = np.exp(val - val[..., :1])
        ids[start:start + n] = idx
        weights[start:start + n] = w / w.sum(-1, keepdims=True)
    return ids, weights


def layout(sequences: int, prompt_len: int, decode_len: int) -> dict[str, np.ndarray]:
    """``sequence``, ``position`` and ``phase`` for sequences laid out one after another."""
    per = prompt_len + decode_len
    pos = np.tile(np.arange(per, dtype=np.uint32), sequences)
    return {
        "sequence": np.repeat(np.arange(sequences, dtype=np.uint32), per),
        "position": pos,
        "phase": np.where(pos < prompt_len, PREFILL, DECODE).astype(np.uint8),
    }


# ----------------------------------------------------------------------------- fitting


def inclusion_probabilities(num_experts: int, top_k: int, s: float, samples: int = FIT_SAMPLES,
                            seed: int = FIT_SEED) -> np.ndarray:
    """Monte-Carlo q_e = P(expert of rank e+1 is in a token's top-k) under Zipf(s) popularity."""
    return _Inclusion(num_experts, top_k, samples, seed)(s)


class _Inclusion:
    """q(s) with the same Gumbel noise for every s (common random numbers)."""

    def __init__(self, num_experts: int, top_k: int, samples: int, seed: int):
        rng = np.random.default_rng(seed)
        self.gumbel = _gumbel(rng, (samples, num_experts))
        self.log_rank = np.log(np.arange(1, num_experts + 1, dtype=np.float32))
        self.k = top_k

    def __call__(self, s: float) -> np.ndarray:
        e = self.gumbel.shape[1]
        if self.k >= e:
            return np.ones(e)
        idx = np.argpartition(-(self.gumbel - np.float32(s) * self.log_rank), self.k - 1, axis=-1)[:, :self.k]
        return np.bincount(idx.ravel(), minlength=e) / len(self.gumbel)


def expected_activated_zipf(num_experts: int, top_k: int, s: float, batch: int | np.ndarray,
                            samples: int = FIT_SAMPLES, seed: int = FIT_SEED) -> np.ndarray | float:
    """Expected distinct experts per layer for a batch of ``batch`` independent tokens under
    Zipf(s): sum_e 1 - (1 - q_e)^B with q_e from :func:`inclusion_probabilities`."""
    q = inclusion_probabilities(num_experts, top_k, s, samples, seed)
    b = np.asarray(batch, float)
    out = (1.0 - (1.0 - q[:, None]) ** b.reshape(1, -1)).sum(0).reshape(b.shape)
    return float(out) if out.ndim == 0 else out


def fit_zipf_exponent(num_experts: int, top_k: int, batch: int, activated: float,
                      samples: int = FIT_SAMPLES, seed: int = FIT_SEED) -> float:
    """The Zipf exponent s >= 0 whose expected activated experts at batch size ``batch`` is
    ``activated`` (see the module docstring). ValueError when no s >= 0 reaches it: the target
    must lie above top_k and at most at the uniform-routing value E (1 - (1 - k/E)^B)."""
    e, k, b, a = int(num_experts), int(top_k), int(batch), float(activated)
    if b < 2:
        raise ValueError(f"batch {b}: a single token always activates exactly top_k={k} experts; fit at batch >= 2")
    if not k <= a <= e:
        raise ValueError(f"activated {a:g} outside [top_k, num_experts] = [{k}, {e}]")
    uniform = float(expected_activated(e, k, b))
    if a > uniform + 1e-9:
        raise ValueError(f"activated {a:g} exceeds uniform routing's {uniform:.1f} at batch {b}, "
                         "the most any Zipf popularity gives")
    if a <= k:
        raise ValueError(f"activated {a:g} must exceed top_k={k} (reached only as s -> infinity)")
    inc = _Inclusion(e, k, samples, seed)

    def f(s: float) -> float:
        return float((1.0 - (1.0 - inc(s)) ** b).sum()) - a

    if f(0.0) <= 0.0:  # target at (or within Monte-Carlo noise of) uniform routing
        return 0.0
    hi = 1.0
    while f(hi) > 0.0:
        if hi >= MAX_S:
            raise ValueError(f"activated {a:g} is too close to top_k={k}: not reached with s <= {MAX_S:g}")
        hi *= 2.0
    return float(brentq(f, 0.0, hi, xtol=1e-5))


# ----------------------------------------------------------------------------- generators


def _check(num_experts: int, top_k: int, moe_layers: int, sequences: int, prompt_len: int,
           decode_len: int) -> None:
    if not 1 <= num_experts <= 65536:
        raise ValueError(f"num_experts {num_experts} outside [1, 65536]")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k {top_k} outside [1, num_experts={num_experts}]")
    if moe_layers < 1:
        raise ValueError(f"moe_layers {moe_layers} must be >= 1")
    if sequences < 1:
        raise ValueError(f"sequences {sequences} must be >= 1")
    if prompt_len < 0 or decode_len < 0 or prompt_len + decode_len < 1:
        raise ValueError(f"prompt_len {prompt_len} and decode_len {decode_len} must be >= 0 with a positive sum")


def synthetic_trace(kind: str = "uniform", *, num_experts: int, top_k: int, moe_layers: int,
                    sequences: int = 64, prompt_len: int = 128, decode_len: int = 128, seed: int = 0,
                    model_id: str = "synthetic", zipf_s: float = 1.0, fit_batch: int | None = None,
                    fit_activated: float | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, meta) of a synthetic trace; ``kind`` is uniform, zipf (exponent ``zipf_s``) or
    fitted (exponent fitted so that batch ``fit_batch`` activates ``fit_activated`` experts)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    _check(num_experts, top_k, moe_layers, sequences, prompt_len, decode_len)
    spec: dict[str, Any] = {"generator": kind, "num_experts": num_experts, "top_k": top_k,
                            "moe_layers": moe_layers, "sequences": sequences, "prompt_len": prompt_len,
                            "decode_len": decode_len, "seed": seed}
    if kind == "uniform":
        s = 0.0
    elif kind == "zipf":
        s = float(zipf_s)
        if not (s >= 0.0 and np.isfinite(s)):
            raise ValueError(f"zipf_s {zipf_s} must be a finite number >= 0")
    else:
        if fit_batch is None or fit_activated is None:
            raise ValueError("the fitted generator needs fit_batch and fit_activated")
        s = fit_zipf_exponent(num_experts, top_k, int(fit_batch), float(fit_activated))
        spec["fit"] = {
            "batch": int(fit_batch), "activated": float(fit_activated),
            "predicted_activated": float(expected_activated_zipf(num_experts, top_k, s, int(fit_batch))),
            "uniform_activated": float(expected_activated(num_experts, top_k, int(fit_batch))),
            "method": f"brentq on sum_e 1-(1-q_e)^B, q_e by Monte Carlo ({FIT_SAMPLES} tokens, seed {FIT_SEED})",
        }
    if kind != "uniform":
        spec["zipf_s"] = s
    spec["routing"] = ("top-k without replacement, p_e ~ rank^-s (ranks permuted per layer), "
                       "Gumbel-top-k; tokens independent")
    rng = np.random.default_rng(seed)
    popularity = zipf_popularity(num_experts, s, moe_layers, rng)
    tokens = sequences * (prompt_len + decode_len)
    ids, weights = sample_routing(popularity, tokens, top_k, rng)
    arrays = {"expert_ids": ids, "weights": weights, **layout(sequences, prompt_len, decode_len)}
    meta = {"model_id": model_id, "num_experts": int(num_experts), "top_k": int(top_k), "synthetic": True,
            "synthetic_spec": spec, "provenance": f"capsim synthetic generator '{kind}' (not measured)"}
    return arrays, meta


def uniform_trace(num_experts: int, top_k: int, moe_layers: int, **kw: Any):
    """Each token picks top_k distinct experts uniformly at random in every layer."""
    return synthetic_trace("uniform", num_experts=num_experts, top_k=top_k, moe_layers=moe_layers, **kw)


def zipf_trace(num_experts: int, top_k: int, moe_layers: int, s: float = 1.0, **kw: Any):
    """Expert popularity ~ rank^-s per layer; top_k drawn without replacement proportionally."""
    return synthetic_trace("zipf", num_experts=num_experts, top_k=top_k, moe_layers=moe_layers, zipf_s=s, **kw)


def fitted_trace(num_experts: int, top_k: int, moe_layers: int, fit_batch: int, fit_activated: float, **kw: Any):
    """Zipf routing with s fitted so that ``fit_batch`` tokens activate ``fit_activated`` experts on average."""
    return synthetic_trace("fitted", num_experts=num_experts, top_k=top_k, moe_layers=moe_layers,
                           fit_batch=fit_batch, fit_activated=fit_activated, **kw)
