"""Activated experts vs batch size, and load imbalance inside one decode step, on sampled batches.

Pure numpy; only the per-token columns are read in full (:mod:`capsim.traces.arrays`), and
``expert_ids`` by row for the sampled batches. E experts, k = top-k, L MoE layers:

* **activated experts at batch size B**: the number of *distinct* experts that at least one
  token of a batch routes to, per layer (MoE-CAP's A). A decode batch is B distinct sequences
  at the same decode step index (B concurrent sequences in one decode iteration); a prefill
  batch is the union of all prompt tokens of B distinct sequences.
* **decode-step imbalance**: inside one such decode batch, max tokens on one expert / mean
  tokens per activated expert (B k / A), and per ``ep`` rank max / mean tokens and max / mean
  activated experts (see :func:`decode_step_imbalance`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from capsim.sim.experts import expected_activated
from capsim.traces.arrays import (
    CHUNK_ELEMS,
    PHASES,
    TraceLike,
    as_trace,
    chunk_tokens,
    column,
    dims,
)
from capsim.traces.format import DECODE, PREFILL, Trace
from capsim.traces.popularity import max_over_mean, rank_loads

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


# ----------------------------------------------------------------------------- batch sampling


class _BatchIndex:
    """Where each sequence's prompt tokens and each decode step's tokens sit in the trace."""

    def __init__(self, t: Trace):
        seq = column(t, "sequence").astype(np.int64)
        pos = column(t, "position").astype(np.int64)
        phase = column(t, "phase")
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
    e, layers, _ = dims(t)
    nseq = len(index.prefill_seqs)
    packed = np.zeros((nseq, layers, (e + 7) // 8), np.uint8)
    step = chunk_tokens(t, layers * e)
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
    group = max(1, CHUNK_ELEMS // max(1, per_sample))
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
    t = as_trace(trace)
    e, layers, k = dims(t)
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
    t = as_trace(trace)
    e, layers, k = dims(t)
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
                parts[(ep, "tokens")].append(max_over_mean(rank_loads(cnt, ep)))
                parts[(ep, "activated")].append(max_over_mean(rank_loads(cnt > 0, ep)))
        experts[i] = np.nanmean(np.concatenate(parts["experts"]))
        for ep in ep_sizes:
            for w in ("tokens", "activated"):
                ep_out[ep][w][i] = np.nanmean(np.concatenate(parts[(ep, w)]))
    return {"batch_sizes": np.array(sizes, dtype=np.int64), "experts": experts, "ep": ep_out,
            "samples": int(samples)}

