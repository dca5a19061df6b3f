"""Statistics of an expert-routing trace: popularity, load imbalance, activated experts, affinity.

Pure numpy. Every pass reads the trace in token chunks, so a trace larger than memory is
never loaded whole: only the small per-token columns (sequence, position, phase: 9 bytes a
token) are held in full, and ``expert_ids`` is read chunk by chunk or by row for the sampled
batches. Functions take an open :class:`~capsim.traces.format.Trace` or a dict of arrays
(see :func:`from_arrays`).

Definitions used throughout (E experts, k = top-k, L MoE layers):

* **popularity**: tokens routed to each expert per layer (a token counts once for each of
  its k slots); ``share`` divides by all routed slots of the layer, so it sums to 1.
* **load imbalance**: max / mean tokens per expert of a layer (1 = balanced); for expert
  parallelism over ``ep`` ranks, expert e lives on rank ``e // (E / ep)`` (contiguous blocks)
  and the ratio is max / mean tokens per rank.
* **activated experts at batch size B**: the number of *distinct* experts that at least one
  token of a batch routes to, per layer (MoE-CAP's A). A decode batch is B distinct sequences
  at the same decode step index (B concurrent sequences in one decode iteration); a prefill
  batch is the union of all prompt tokens of B distinct sequences.
* **cross-layer affinity**: see :func:`cross_layer_affinity`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from capsim.sim.experts import expected_activated
from capsim.traces.format import DECODE, PREFILL, Trace

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
DEFAULT_EP_SIZES = (2, 4, 8)
PHASES = {"prefill": PREFILL, "decode": DECODE}
_CHUNK_ELEMS = 1 << 24  # expert-id elements read at once (16 Mi: 16 MiB as uint8)
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)

TraceLike = Trace | Mapping[str, np.ndarray]


# ----------------------------------------------------------------------------- input


def from_arrays(arrays: Mapping[str, np.ndarray], num_experts: int | None = None,
                top_k: int | None = None) -> Trace:
    """An in-memory :class:`Trace` over ``arrays`` (at least ``expert_ids`` (tokens, layers, k)).

    Missing columns are filled as one prefill sequence: ``sequence`` 0, ``position`` 0..n-1,
    ``phase`` prefill, ``weights`` 1/k. ``num_experts`` defaults to the largest id + 1.
    """
    ids = np.asarray(arrays["expert_ids"])
    if ids.ndim != 3:
        raise ValueError("expert_ids must be (tokens, moe_layers, top_k)")
    n, layers, k = ids.shape
    e = int(num_experts) if num_experts is not None else (int(ids.max()) + 1 if ids.size else 1)
    out = {
        "expert_ids": ids,
        "weights": np.asarray(arrays["weights"]) if "weights" in arrays else np.full(ids.shape, 1.0 / k, np.float16),
        "sequence": np.asarray(arrays["sequence"]) if "sequence" in arrays else np.zeros(n, np.uint32),
        "position": np.asarray(arrays["position"]) if "position" in arrays else np.arange(n, dtype=np.uint32),
        "phase": np.asarray(arrays["phase"]) if "phase" in arrays else np.full(n, PREFILL, np.uint8),
    }
    meta = {"model_id": "<arrays>", "num_experts": e, "top_k": int(top_k or k), "moe_layers": layers,
            "synthetic": None, "tokens": n}
    return Trace(Path("<memory>"), meta, out)


def _as_trace(trace: TraceLike) -> Trace:
    if isinstance(trace, Trace):
        return trace
    if isinstance(trace, Mapping):
        return from_arrays(trace)
    raise TypeError(f"expected a Trace or a dict of arrays, got {type(trace).__name__}")


def _dims(t: Trace) -> tuple[int, int, int]:
    _, layers, k = t.expert_ids.shape
    return t.num_experts, layers, k


def _chunk_tokens(t: Trace, per_token: int | None = None) -> int:
    e, layers, k = _dims(t)
    return max(1, _CHUNK_ELEMS // max(1, per_token or layers * k))


def _column(t: Trace, name: str) -> np.ndarray:
    """A small per-token column read in full (chunk by chunk, so memory maps stay cheap)."""
    a = t.arrays[name]
    step = 1 << 22
    return np.concatenate([np.asarray(a[i:i + step]) for i in range(0, len(a), step)]) if len(a) else np.asarray(a[:0])


# ----------------------------------------------------------------------------- popularity


def expert_popularity(trace: TraceLike) -> dict[str, Any]:
    """Tokens routed to each expert per layer, overall and per phase.

    Returns ``{"counts": {"all"|"prefill"|"decode": int64 (L, E)}, "share": {...: float (L, E)},
    "tokens": {...: int}}``; ``share`` rows sum to 1 (0 for a phase without tokens).
    """
    t = _as_trace(trace)
    e, layers, _ = _dims(t)
    offset = (np.arange(layers, dtype=np.int64) * e)[None, :, None]
    counts = {name: np.zeros(layers * e, np.int64) for name in ("all", "prefill", "decode")}
    tokens = dict.fromkeys(counts, 0)
    for c in t.chunks(_chunk_tokens(t)):
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


def _max_over_mean(x: np.ndarray) -> np.ndarray:
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
    out: dict[str, Any] = {"experts": _layer_summary(_max_over_mean(counts)), "ep": {}}
    for ep in ep_sizes:
        r = rank_loads(counts, int(ep))
        out["ep"][int(ep)] = {**_layer_summary(_max_over_mean(r)), "rank_tokens": r}
    return out


# ----------------------------------------------------------------------------- batch sampling


class _BatchIndex:
    """Where each sequence's prompt tokens and each decode step's tokens sit in the trace."""

    def __init__(self, t: Trace):
        seq = _column(t, "sequence").astype(np.int64)
        pos = _column(t, "position").astype(np.int64)
        phase = _column(t, "phase")
        # decode: rows sorted by (step index within the sequence, sequence)
        rows = np.flatnonzero(phase == DECODE)
        order = np.lexsort((pos[rows], seq[rows]))
        rows, s = rows[order], seq[rows[order]]
        first = np.r_[True, s[1:] != s[:-1]] if len(s) else np.zeros(0, bool)
        group_start = np.flatnonzero(first)
        step = np.arange(len(s)) - np.repeat(group_start, np.diff(np.r_[group_start, len(s)]))
        order = np.lexsort((s, step))
        self.decode_rows = rows[order]
        self.step_count = np.bincount(step) if len(step) else np.zeros(0, np.int64)  # sequences at step j
        self.step_start = np.r_[0, np.cumsum(self.step_count)[:-1]].astype(np.int64)
        # prefill: rows grouped by sequence
        prows = np.flatnonzero(phase == PREFILL)
        self.prefill_seqs, self.prefill_inverse = np.unique(seq[prows], return_inverse=True)
        self.prefill_rows = prows
        self.prefill_tokens = np.bincount(self.prefill_inverse, minlength=len(self.prefill_seqs))

    def max_batch(self, phase: str) -> int:
        if phase == "decode":
            return int(self.step_count[0]) if len(self.step_count) else 0
        return len(self.prefill_seqs)

    def decode_batches(self, batch: int, samples: int, rng: np.random.Generator) -> np.ndarray:
        """Rows (samples, batch): each row B distinct sequences at one random decode step."""
        eligible = int(np.sum(self.step_count >= batch))  # a prefix: counts fall with the step
        steps = rng.integers(eligible, size=samples)
        out = np.empty((samples, batch), np.int64)
        for i, j in enumerate(steps):
            pick = rng.choice(int(self.step_count[j]), size=batch, replace=False)
            out[i] = self.decode_rows[self.step_start[j] + pick]
        return out

    def prefill_batches(self, batch: int, samples: int, rng: np.random.Generator) -> np.ndarray:
        """Sequence indices (samples, batch) into ``prefill_seqs``, B distinct in each row."""
        n = len(self.prefill_seqs)
        return np.stack([rng.choice(n, size=batch, replace=False) for _ in range(samples)])


def _gather_ids(t: Trace, rows: np.ndarray) -> np.ndarray:
    """expert_ids for a (samples, B) row matrix -> (samples, B, L, k) int64 (sorted reads)."""
    flat = rows.ravel()
    uniq, inv = np.unique(flat, return_inverse=True)
    ids = np.asarray(t.expert_ids[uniq]).astype(np.int64)
    return ids[inv.ravel()].reshape(*rows.shape, *ids.shape[1:])


def _distinct_per_layer(ids: np.ndarray, e: int) -> np.ndarray:
    """(S, T, L, k) ids -> (S, L) distinct experts per layer of each of the S batches."""
    s, _, layers, _ = ids.shape
    flat = ids + (np.arange(s, dtype=np.int64)[:, None, None, None] * layers
                  + np.arange(layers, dtype=np.int64)[None, None, :, None]) * e
    mask = np.zeros(s * layers * e, bool)
    mask[flat.ravel()] = True
    return mask.reshape(s, layers, e).sum(-1)


def _tokens_per_expert(ids: np.ndarray, e: int) -> np.ndarray:
    """(S, T, L, k) ids -> (S, L, E) tokens routed to each expert in each batch."""
    s, _, layers, _ = ids.shape
    flat = ids + (np.arange(s, dtype=np.int64)[:, None, None, None] * layers
                  + np.arange(layers, dtype=np.int64)[None, None, :, None]) * e
    return np.bincount(flat.ravel(), minlength=s * layers * e).reshape(s, layers, e)


def _prefill_masks(t: Trace, index: _BatchIndex) -> np.ndarray:
    """Per prefill sequence and layer, the experts its prompt touched: packed bits (S, L, ceil(E/8))."""
    e, layers, _ = _dims(t)
    nseq = len(index.prefill_seqs)
    packed = np.zeros((nseq, layers, (e + 7) // 8), np.uint8)
    step = _chunk_tokens(t, layers * e)
    rows, inv = index.prefill_rows, index.prefill_inverse
    lidx = np.arange(layers)[None, :, None]
    for start in range(0, len(rows), step):
        r, s = rows[start:start + step], inv[start:start + step]
        ids = np.asarray(t.expert_ids[r]).astype(np.int64)  # rows are increasing: a sorted read
        u, local = np.unique(s, return_inverse=True)
        mask = np.zeros((len(u), layers, e), bool)
        mask[local.ravel()[:, None, None], lidx, ids] = True
        packed[u] |= np.packbits(mask, axis=-1)
    return packed


def _batch_groups(samples: int, per_sample: int) -> Iterable[slice]:
    group = max(1, _CHUNK_ELEMS // max(1, per_sample))
    for start in range(0, samples, group):
        yield slice(start, min(samples, start + group))


def _check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise ValueError(f"phase must be 'prefill' or 'decode', not {phase!r}")


def activated_experts_curve(trace: TraceLike, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                            phase: str = "decode", samples: int = 200, seed: int = 0) -> dict[str, Any]:
    """Distinct experts activated per layer as a function of batch size, measured on the trace.

    For each B in ``batch_sizes`` (sizes above the number of sequences available are dropped),
    ``samples`` random batches are drawn with ``numpy.random.default_rng(seed)``:

    * ``phase="decode"``: a decode step index j uniformly among the steps that at least B
      sequences reach, then B distinct sequences among those, each contributing its j-th decode
      token: B concurrent sequences in one decode iteration (T = B tokens);
    * ``phase="prefill"``: B distinct sequences, all their prompt tokens (T = sum of prompt lengths).

    Per batch and layer the number of distinct experts touched is counted. For each layer the
    mean, p10, p50, p90 and std over the samples are taken, and then each is averaged over
    layers. ``uniform`` is the uniform, independent routing expectation E (1 - (1 - k/E)^T)
    averaged over the same samples' token counts T; ``tokens`` is the mean T.

    Returns numpy arrays, one entry per kept batch size: ``batch_sizes`` (int), ``mean``,
    ``p10``, ``p50``, ``p90``, ``std``, ``uniform``, ``tokens``; plus ``per_layer_mean``
    (n_batch, L), ``phase``, ``samples``, ``max_batch`` (sequences available).
    """
    _check_phase(phase)
    t = _as_trace(trace)
    e, layers, k = _dims(t)
    index = _BatchIndex(t)
    max_batch = index.max_batch(phase)
    sizes = sorted({int(b) for b in batch_sizes})
    if sizes and sizes[0] < 1:
        raise ValueError("batch sizes must be >= 1")
    if samples < 1:
        raise ValueError("samples must be >= 1")
    sizes = [b for b in sizes if b <= max_batch]
    rng = np.random.default_rng(seed)
    packed = _prefill_masks(t, index) if phase == "prefill" and sizes else None
    keys = ("mean", "p10", "p50", "p90", "std", "uniform", "tokens")
    out: dict[str, Any] = {key: np.zeros(len(sizes)) for key in keys}
    out["per_layer_mean"] = np.zeros((len(sizes), layers))
    for i, b in enumerate(sizes):
        if phase == "decode":
            rows = index.decode_batches(b, samples, rng)
            tokens = np.full(samples, float(b))
            dist = np.concatenate([_distinct_per_layer(_gather_ids(t, rows[g]), e)
                                   for g in _batch_groups(samples, b * layers * k * 2)])
        else:
            seqs = index.prefill_batches(b, samples, rng)
            tokens = index.prefill_tokens[seqs].sum(1).astype(float)
            dist = np.concatenate([
                _POPCOUNT[np.bitwise_or.reduce(packed[seqs[g]], axis=1)].sum(-1)
                for g in _batch_groups(samples, b * packed[0].size)
            ])
        dist = dist.astype(float)  # (samples, L)
        out["per_layer_mean"][i] = dist.mean(0)
        out["mean"][i] = dist.mean()
        for q in (10, 50, 90):
            out[f"p{q}"][i] = np.percentile(dist, q, axis=0).mean()
        out["std"][i] = dist.std(0).mean()
        out["uniform"][i] = expected_activated(e, k, tokens).mean()
        out["tokens"][i] = tokens.mean()
    out["batch_sizes"] = np.array(sizes, dtype=np.int64)
    out.update(phase=phase, samples=int(samples), max_batch=int(max_batch))
    return out


def decode_step_imbalance(trace: TraceLike, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                          ep_sizes: Iterable[int] = (), samples: int = 200, seed: int = 0) -> dict[str, Any]:
    """Load imbalance inside one decode iteration of B concurrent sequences (batches as in
    :func:`activated_experts_curve` with the same seed, so the same batches).

    Per batch and layer: ``experts`` = max tokens on one expert / mean tokens per *activated*
    expert (B k / A; 1 when every activated expert gets the same number of tokens: the
    straggler of a grouped GEMM), and for each ``ep``: max / mean tokens per rank (``tokens``)
    and max / mean distinct experts per rank (``activated``: the rank that reads the most
    expert weights, over all ep ranks). Each is averaged over samples and layers. Returns arrays per kept batch size: ``batch_sizes``, ``experts``,
    ``ep`` -> {ep: {"tokens": ..., "activated": ...}}.
    """
    t = _as_trace(trace)
    e, layers, k = _dims(t)
    ep_sizes = [int(ep) for ep in ep_sizes]
    for ep in ep_sizes:
        if ep < 1 or e % ep:
            raise ValueError(f"ep={ep} does not divide {e} experts")
    index = _BatchIndex(t)
    sizes = [b for b in sorted({int(b) for b in batch_sizes}) if 1 <= b <= index.max_batch("decode")]
    rng = np.random.default_rng(seed)
    experts = np.zeros(len(sizes))
    ep_out = {ep: {"tokens": np.zeros(len(sizes)), "activated": np.zeros(len(sizes))} for ep in ep_sizes}
    for i, b in enumerate(sizes):
        rows = index.decode_batches(b, samples, rng)
        parts: dict[Any, list[np.ndarray]] = {"experts": [], **{(ep, w): [] for ep in ep_sizes
                                                                for w in ("tokens", "activated")}}
        for g in _batch_groups(samples, b * layers * k * 2 + layers * e):
            cnt = _tokens_per_expert(_gather_ids(t, rows[g]), e)  # (s, L, E)
            active = (cnt > 0).sum(-1)
            parts["experts"].append(cnt.max(-1) * active / np.maximum(cnt.sum(-1), 1))
            for ep in ep_sizes:
                parts[(ep, "tokens")].append(_max_over_mean(rank_loads(cnt, ep)))
                parts[(ep, "activated")].append(_max_over_mean(rank_loads(cnt > 0, ep)))
        experts[i] = np.nanmean(np.concatenate(parts["experts"]))
        for ep in ep_sizes:
            for w in ("tokens", "activated"):
                ep_out[ep][w][i] = np.nanmean(np.concatenate(parts[(ep, w)]))
    return {"batch_sizes": np.array(sizes, dtype=np.int64), "experts": experts, "ep": ep_out,
            "samples": int(samples)}


# ----------------------------------------------------------------------------- affinity


def affinity_counts(trace: TraceLike) -> np.ndarray:
    """Joint counts C (L-1, E, E): C[l, i, j] = number of (token, slot at l, slot at l+1) with
    expert i at layer l and expert j at layer l+1 (each token contributes its k x k pairs)."""
    t = _as_trace(trace)
    e, layers, k = _dims(t)
    out = np.zeros((max(0, layers - 1), e * e), np.int64)
    for c in t.chunks(_chunk_tokens(t, layers * k * k)):
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
    t = _as_trace(trace)
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


# ----------------------------------------------------------------------------- summary


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
    """Everything above in one JSON-serialisable dict (plain Python types, NaN as None).

    ``ep_sizes`` defaults to those of 2, 4, 8 that divide E.
    """
    t = _as_trace(trace)
    e, layers, k = _dims(t)
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
