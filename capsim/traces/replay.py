"""Replay a token-level trace at any batch size: what a step's real routing costs.

A token's routing does not depend on the batch it runs in, so a batch of B
concurrent sequences is composed from the trace at replay time: for a decode
step, one decode token from each of B distinct sequences (or B distinct decode
tokens when the trace has fewer than B sequences); for the prefill pass, every
prompt token of B distinct sequences. Per MoE layer the step then touches the
UNION of the experts its tokens chose (weight bytes), puts tokens x top-k
assignments on experts (FLOPs), and, with expert parallelism over ``ep`` ranks
(expert e on rank e // (E / ep)), the slowest rank sets the step. Many random
compositions give the spread (p10 / p50 / p90) of a prediction.

Speed: each random composition is a random ORDER of sequences, and the batch of
size B is its first B entries, so one cumulative union over the order answers
every batch size at once (``*_curve``). Prompt tokens are reduced once per
sequence to per-layer expert counts (cached per trace), so a prefill batch is a
sum of B small count tables, not a pass over its tokens.
Everything here is numpy on memory-mapped arrays: no torch.
"""

from __future__ import annotations

import math

import numpy as np

from capsim.errors import CapsimError
from capsim.traces.format import DECODE, PREFILL, Trace

DEFAULT_SAMPLES = 200  # batch compositions drawn per prediction
PREFILL_SAMPLES = 50  # a prefill pass covers many tokens: fewer compositions suffice
_CHUNK_TOKENS = 1 << 15
_CHUNK_SAMPLES = 16
_FEW_SIZES = 8  # up to this many batch sizes, sum segments between them instead of a running sum


def check_compatible(trace: Trace, num_experts: int, top_k: int, ep: int) -> None:
    if trace.num_experts != num_experts or trace.top_k != top_k:
        raise CapsimError(
            f"--trace {trace.path}: recorded with {trace.num_experts} experts top-{trace.top_k}, "
            f"but the model has {num_experts} top-{top_k}"
        )
    if num_experts % ep:
        raise CapsimError(f"--ep {ep}: {num_experts} experts do not split evenly over {ep} ranks")


def _stats_from_counts(counts: np.ndarray, ep: int) -> dict[str, np.ndarray]:
    """counts (..., layers, E) of token-expert assignments -> per-leading-index stats averaged over layers."""
    e = counts.shape[-1]
    per_rank = counts.reshape(*counts.shape[:-1], ep, e // ep)
    rank_tokens = per_rank.sum(-1)
    mean_rank = np.maximum(rank_tokens.mean(-1), 1e-12)
    return {
        "activated": (counts > 0).sum(-1).mean(-1).astype(float),
        "rank_activated": (per_rank > 0).sum(-1).max(-1).mean(-1).astype(float),
        "rank_load": (rank_tokens.max(-1) / mean_rank).mean(-1),
    }


def _one_hot_counts(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """ids (tokens, layers, k) -> (tokens, layers, E) 0/1 (a token's top-k experts are distinct)."""
    n, layers, _ = ids.shape
    out = np.zeros((n, layers, num_experts), dtype=np.uint8)
    out[np.arange(n)[:, None, None], np.arange(layers)[None, :, None], ids.astype(np.intp)] = 1
    return out


def _curve(counts_of, n_items: int, batch_sizes, samples: int, rng, ep: int) -> dict[str, np.ndarray]:
    """Stats (samples, len(batch_sizes)) of unions over the first B items of random orders.

    counts_of(idx) gives int counts (len(idx), layers, E) for item indices ``idx``.
    """
    bs = np.asarray(batch_sizes, dtype=int)
    bmax = int(bs.max())
    out = {k: np.zeros((samples, len(bs))) for k in ("activated", "rank_activated", "rank_load")}
    for lo in range(0, samples, _CHUNK_SAMPLES):
        hi = min(samples, lo + _CHUNK_SAMPLES)
        order = np.argsort(rng.random((hi - lo, n_items)), axis=1)[:, :bmax]
        c = counts_of(order.ravel())
        c = c.reshape(hi - lo, bmax, *c.shape[1:])
        # prefix sums only at the asked sizes: sum each segment between them, then accumulate the few segments
        sizes = np.unique(bs)
        if len(sizes) > _FEW_SIZES:  # many sizes: one running sum over the order
            cum = np.cumsum(c, axis=1, dtype=np.int32)[:, bs - 1]
        else:
            seg = np.add.reduceat(c, np.concatenate([[0], sizes[:-1]]), axis=1, dtype=np.int32)
            cum = np.cumsum(seg, axis=1)[:, np.searchsorted(sizes, bs)]  # (s, len(bs), layers, E)
        st = _stats_from_counts(cum, ep)
        for k in out:
            out[k][lo:hi] = st[k]
    return out


def _sequence_index(trace: Trace, phase: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``phase`` sorted by sequence, the sequence ids, and each one's start and count in that order."""
    rows = np.flatnonzero(np.asarray(trace.phase) == phase)
    seqs = np.asarray(trace.sequence)[rows]
    order = np.argsort(seqs, kind="stable")
    uniq, start, count = np.unique(seqs[order], return_index=True, return_counts=True)
    return rows[order], uniq, start, count


_PREFILL_CACHE: dict[tuple[str, str], np.ndarray] = {}


def _prefill_counts(trace: Trace) -> np.ndarray:
    """Per traced sequence: (layers, E) counts of its prompt tokens' assignments (cached per trace content)."""
    key = (str(trace.path), trace.meta["content_sha256"])
    if key in _PREFILL_CACHE:
        return _PREFILL_CACHE[key]
    rows, uniq, start, _ = _sequence_index(trace, PREFILL)
    layers, e = trace.expert_ids.shape[1], trace.num_experts
    seq_of_row = np.repeat(np.arange(len(uniq)), np.diff(np.append(start, len(rows))))
    counts = np.zeros(len(uniq) * layers * e, dtype=np.int64)
    for lo in range(0, len(rows), _CHUNK_TOKENS):
        r = rows[lo:lo + _CHUNK_TOKENS]
        ids = np.asarray(trace.expert_ids[np.sort(r)])  # in-order read of the memory map
        s = seq_of_row[lo:lo + _CHUNK_TOKENS][np.argsort(np.argsort(r))]
        flat = (s[:, None, None] * layers + np.arange(layers)[None, :, None]) * e + ids
        counts += np.bincount(flat.ravel(), minlength=counts.size)
    out = counts.reshape(len(uniq), layers, e).astype(np.int32)
    _PREFILL_CACHE.clear()
    _PREFILL_CACHE[key] = out
    return out


def prefill_routing_curve(trace: Trace, batch_sizes, ep: int = 1, samples: int = PREFILL_SAMPLES, seed: int = 1):
    """Prefill-pass routing stats (samples, len(batch_sizes)) over the prompts of B random sequences."""
    per_seq = _prefill_counts(trace)
    if len(per_seq) == 0:
        raise CapsimError(f"--trace {trace.path}: no prefill tokens to replay")
    bs = np.minimum(np.asarray(batch_sizes, dtype=int), len(per_seq))
    notes = [] if np.all(bs == np.asarray(batch_sizes)) else [
        f"prefill replay uses all {len(per_seq)} traced prompts (fewer than the batch)"]
    stats = _curve(lambda idx: per_seq[idx], len(per_seq), bs, samples, np.random.default_rng(seed), ep)
    return stats, notes


def decode_routing_curve(trace: Trace, batch_sizes, ep: int = 1, samples: int = DEFAULT_SAMPLES, seed: int = 0):
    """Decode-step routing stats (samples, len(batch_sizes)): one decode token from each of B sequences."""
    rng = np.random.default_rng(seed)
    rows, uniq, start, count = _sequence_index(trace, DECODE)
    if rows.size == 0:
        raise CapsimError(f"--trace {trace.path}: no decode tokens to replay")
    bs = np.asarray(batch_sizes, dtype=int)
    e, k = trace.num_experts, trace.top_k
    ids_all = trace.expert_ids
    notes = []
    if len(uniq) >= bs.max():
        # item = a sequence; each draw takes one of its decode tokens at random
        def counts_of(idx):
            pick = rows[start[idx] + (rng.random(len(idx)) * count[idx]).astype(np.int64)]
            srt = np.argsort(pick)
            ids = np.empty((len(pick), *ids_all.shape[1:]), dtype=ids_all.dtype)
            ids[srt] = ids_all[pick[srt]]
            return _one_hot_counts(ids, e)

        n_items = len(uniq)
    else:
        if rows.size < bs.max():
            raise CapsimError(f"--trace {trace.path}: {rows.size} decode tokens, fewer than --batch {bs.max()}")
        notes.append(f"trace has {len(uniq)} sequences < batch {bs.max()}: a batch takes several tokens of one "
                     "sequence, which may understate the experts it activates")

        def counts_of(idx):
            pick = rows[idx]
            srt = np.argsort(pick)
            ids = np.empty((len(pick), *ids_all.shape[1:]), dtype=ids_all.dtype)
            ids[srt] = ids_all[pick[srt]]
            return _one_hot_counts(ids, e)

        n_items = rows.size
    assert k == ids_all.shape[2]
    return _curve(counts_of, n_items, bs, samples, rng, ep), notes


def decode_routing(trace: Trace, batch: int, ep: int = 1, samples: int = DEFAULT_SAMPLES, seed: int = 0):
    """Routing statistics (arrays of ``samples``) of random decode batches of ``batch`` sequences."""
    stats, notes = decode_routing_curve(trace, [batch], ep, samples, seed)
    return {k: v[:, 0] for k, v in stats.items()}, notes


def prompts_for(trace: Trace, batch: int, input_len: int | None) -> tuple[int, list[str]]:
    """How many traced prompts a prefill of ``batch`` prompts of ``input_len`` tokens draws: enough to hold as
    many prompt tokens, ceil(batch x input_len / mean traced prompt length), and at least ``batch``.
    A traced prompt is shorter or longer than the one predicted; its tokens are what routing sees."""
    if input_len is None:
        return batch, []
    per_seq = _prefill_counts(trace)
    if len(per_seq) == 0:
        return batch, []
    mean_len = float(per_seq[:, 0, :].sum()) / (len(per_seq) * trace.top_k)  # tokens per traced prompt
    n = max(batch, math.ceil(batch * input_len / mean_len - 1e-9))
    if n == batch:
        return n, []
    return n, [f"prefill replay draws {n} traced prompts (mean {mean_len:.0f} tokens) for the {batch} x "
               f"{input_len} prompt tokens of the batch"]


def prefill_routing(trace: Trace, batch: int, ep: int = 1, samples: int = DEFAULT_SAMPLES, seed: int = 1,
                    input_len: int | None = None):
    """Routing statistics of prefill passes over the prompts of ``batch`` random sequences; with ``input_len``,
    over as many traced prompts as hold ``batch`` x ``input_len`` tokens (:func:`prompts_for`).

    Computed for min(samples, PREFILL_SAMPLES) compositions and cycled to ``samples`` values, to pair
    one to one with the decode samples of a prediction.
    """
    batch, extra = prompts_for(trace, batch, input_len)
    stats, notes = prefill_routing_curve(trace, [batch], ep, min(samples, PREFILL_SAMPLES), seed)
    notes = extra + notes
    return {k: np.resize(v[:, 0], samples) for k, v in stats.items()}, notes
