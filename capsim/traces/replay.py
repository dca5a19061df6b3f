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

Each random composition is a random ORDER of the items (sequences, or tokens), and the batch of size B
is its first B entries; the decode token a sequence contributes is drawn once per composition and
sequence. So a size's compositions are the same whichever other sizes are asked for in the same call
(``*_many`` answers arrays of sizes at once, and a sweep agrees with one prediction at a time). Counts
come from one ``bincount`` over the chosen tokens' expert ids (decode) and one matrix product of the
compositions with per-sequence count tables (prefill); the tables and sequence indexes are built once per
trace and process. Everything here is numpy on memory-mapped arrays: no torch.
"""

from __future__ import annotations

import math

import numpy as np

from capsim.errors import CapsimError
from capsim.traces.format import DECODE, PREFILL, Trace

DEFAULT_SAMPLES = 200  # batch compositions drawn per prediction
PREFILL_SAMPLES = 50  # a prefill pass covers many tokens: fewer compositions suffice
_CHUNK_TOKENS = 1 << 15
_CHUNK_SAMPLES = 16  # compositions drawn at a time (the random stream's unit)
_MAX_ENTRIES = 1 << 24  # expert ids counted per bincount call (memory: 8 bytes each)
STATS = ("activated", "rank_activated", "rank_load")


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


def _orders(rng, samples: int, n_items: int, bmax: int, draws: bool):
    """Random orders (samples, bmax) of ``n_items`` items, drawn in chunks of _CHUNK_SAMPLES, and per order
    entry a uniform draw (or None) taken once per composition and item."""
    orders, us = [], []
    for lo in range(0, samples, _CHUNK_SAMPLES):
        c = min(samples, lo + _CHUNK_SAMPLES) - lo
        order = np.argsort(rng.random((c, n_items)), axis=1)[:, :bmax]
        orders.append(order)
        if draws:
            us.append(np.take_along_axis(rng.random((c, n_items)), order, axis=1))
    return np.concatenate(orders), (np.concatenate(us) if draws else None)


def _segments(bmax: int, sizes: np.ndarray) -> np.ndarray:
    """For each position j < bmax, the index of the first asked size that includes it."""
    return np.searchsorted(sizes, np.arange(bmax), side="right")


def _block(samples_per: int, bins_per: int) -> int:
    """Samples per block so that one block's entries and count bins stay within _MAX_ENTRIES."""
    return max(1, _MAX_ENTRIES // max(samples_per, bins_per, 1))


def _decode_stats(ids: np.ndarray, sizes: np.ndarray, num_experts: int, ep: int) -> dict[str, np.ndarray]:
    """ids (samples, bmax, layers, k) of the chosen tokens -> stats (samples, len(sizes)) of the prefixes of
    length ``sizes`` (per block of samples: one bincount per segment between sizes, a running sum over them)."""
    s, bmax, layers, k = ids.shape
    nseg, bins = len(sizes), layers * num_experts
    base = (_segments(bmax, sizes)[:, None, None] * layers + np.arange(layers)[None, :, None]) * num_experts
    out = {key: np.empty((s, nseg)) for key in STATS}
    step = _block(bmax * layers * k, nseg * bins)
    for lo in range(0, s, step):
        blk = ids[lo:lo + step]
        n = len(blk)
        flat = (np.arange(n)[:, None, None, None] * (nseg * bins) + base[None] + blk).ravel()
        c = np.cumsum(np.bincount(flat, minlength=n * nseg * bins).reshape(n, nseg, layers, num_experts), axis=1)
        for key, v in _stats_from_counts(c, ep).items():
            out[key][lo:lo + n] = v
    return out


def _pick(stats: dict[str, np.ndarray], sizes: np.ndarray, asked: np.ndarray) -> dict[str, np.ndarray]:
    """Stats (samples, len(asked)) from stats (samples, len(sizes))."""
    where = np.searchsorted(sizes, asked)
    return {k: v[:, where] for k, v in stats.items()}


_INDEX: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


def _sequence_index(trace: Trace, phase: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``phase`` sorted by sequence, the sequence ids, and each one's start and count in that order
    (cached per trace content)."""
    key = (str(trace.path), trace.meta.get("content_sha256"), phase, len(trace))
    if key[1] is not None and key in _INDEX:
        return _INDEX[key]
    rows = np.flatnonzero(np.asarray(trace.phase) == phase)
    seqs = np.asarray(trace.sequence)[rows]
    order = np.argsort(seqs, kind="stable")
    uniq, start, count = np.unique(seqs[order], return_index=True, return_counts=True)
    out = (rows[order], uniq, start, count)
    if key[1] is not None:
        if len(_INDEX) > 8:
            _INDEX.clear()
        _INDEX[key] = out
    return out


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
    asked = np.minimum(np.asarray(batch_sizes, dtype=int), len(per_seq))
    notes = [] if np.all(asked == np.asarray(batch_sizes)) else [
        f"prefill replay uses all {len(per_seq)} traced prompts (fewer than the batch)"]
    sizes = np.unique(asked)
    n_items, (layers, e) = len(per_seq), per_seq.shape[1:]
    order, _ = _orders(np.random.default_rng(seed), samples, n_items, int(sizes.max()), draws=False)
    # compositions as 0/1 rows over the sequences, one per (sample, segment between asked sizes): a matrix
    # product with the per-sequence tables sums each segment's counts (exact: float32 holds them)
    seg = _segments(order.shape[1], sizes)
    table = per_seq.reshape(n_items, layers * e).astype(np.float32)
    out = {key: np.empty((samples, len(sizes))) for key in STATS}
    step = _block(n_items * len(sizes), len(sizes) * layers * e)
    for lo in range(0, samples, step):
        blk = order[lo:lo + step]
        n = len(blk)
        sel = np.zeros((n, len(sizes), n_items), dtype=np.float32)
        sel[np.arange(n)[:, None], seg[None, :], blk] = 1.0
        counts = np.cumsum((sel.reshape(-1, n_items) @ table).reshape(n, len(sizes), layers, e), axis=1)
        for key, v in _stats_from_counts(np.rint(counts).astype(np.int64), ep).items():
            out[key][lo:lo + n] = v
    return _pick(out, sizes, asked), notes


def decode_routing_curve(trace: Trace, batch_sizes, ep: int = 1, samples: int = DEFAULT_SAMPLES, seed: int = 0):
    """Decode-step routing stats (samples, len(batch_sizes)): one decode token from each of B sequences."""
    rng = np.random.default_rng(seed)
    rows, uniq, start, count = _sequence_index(trace, DECODE)
    if rows.size == 0:
        raise CapsimError(f"--trace {trace.path}: no decode tokens to replay")
    asked = np.asarray(batch_sizes, dtype=int)
    sizes = np.unique(asked)
    bmax = int(sizes.max())
    notes = []
    if len(uniq) >= bmax:  # item = a sequence; each composition takes one of its decode tokens at random
        order, u = _orders(rng, samples, len(uniq), bmax, draws=True)
        pick = rows[start[order] + (u * count[order]).astype(np.int64)]
    else:
        if rows.size < bmax:
            raise CapsimError(f"--trace {trace.path}: {rows.size} decode tokens, fewer than --batch {bmax}")
        notes.append(f"trace has {len(uniq)} sequences < batch {bmax}: a batch takes several tokens of one "
                     "sequence, which may understate the experts it activates")
        order, _ = _orders(rng, samples, rows.size, bmax, draws=False)
        pick = rows[order]
    flat = pick.ravel()
    srt = np.argsort(flat, kind="stable")
    ids = np.empty((flat.size, *trace.expert_ids.shape[1:]), dtype=trace.expert_ids.dtype)
    ids[srt] = trace.expert_ids[flat[srt]]  # in-order read of the memory map
    stats = _decode_stats(ids.reshape(*pick.shape, *ids.shape[1:]), sizes, trace.num_experts, ep)
    return _pick(stats, sizes, asked), notes


def decode_routing(trace: Trace, batch: int, ep: int = 1, samples: int = DEFAULT_SAMPLES, seed: int = 0):
    """Routing statistics (arrays of ``samples``) of random decode batches of ``batch`` sequences."""
    stats, notes = decode_routing_curve(trace, [batch], ep, samples, seed)
    return {k: v[:, 0] for k, v in stats.items()}, notes


def _mean_prompt_len(trace: Trace) -> float | None:
    per_seq = _prefill_counts(trace)
    if len(per_seq) == 0:
        return None
    return float(per_seq[:, 0, :].sum()) / (len(per_seq) * trace.top_k)  # tokens per traced prompt


def prompts_for(trace: Trace, batch: int, input_len: int | None) -> tuple[int, list[str]]:
    """How many traced prompts a prefill of ``batch`` prompts of ``input_len`` tokens draws: enough to hold as
    many prompt tokens, ceil(batch x input_len / mean traced prompt length), and at least ``batch``.
    A traced prompt is shorter or longer than the one predicted; its tokens are what routing sees."""
    if input_len is None:
        return batch, []
    mean_len = _mean_prompt_len(trace)
    if mean_len is None:
        return batch, []
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
    stats, notes = prefill_routing_many(trace, np.array([batch]), ep, samples, seed,
                                        None if input_len is None else np.array([input_len]))
    return {k: v[0] for k, v in stats.items()}, notes


def decode_routing_many(trace: Trace, batch, ep: int = 1, samples: int = DEFAULT_SAMPLES, seed: int = 0):
    """:func:`decode_routing` for an array of batches at once: stats of shape batch.shape + (samples,)."""
    batch = np.asarray(batch, dtype=int)
    stats, notes = decode_routing_curve(trace, batch.ravel(), ep, samples, seed)
    return {k: v.T.reshape(*batch.shape, samples) for k, v in stats.items()}, notes


def prefill_routing_many(trace: Trace, batch, ep: int = 1, samples: int = DEFAULT_SAMPLES, seed: int = 1,
                         input_len=None):
    """:func:`prefill_routing` for arrays of batches and prompt lengths: stats of shape batch.shape + (samples,)."""
    batch = np.asarray(batch, dtype=int)
    lengths = np.broadcast_to(np.asarray(input_len), batch.shape) if input_len is not None else None
    prompts, notes = np.empty(batch.shape, dtype=int), []
    for idx in np.ndindex(batch.shape):
        n, extra = prompts_for(trace, int(batch[idx]), None if lengths is None else int(lengths[idx]))
        prompts[idx] = n
        notes += [x for x in extra if x not in notes]
    stats, more = prefill_routing_curve(trace, prompts.ravel(), ep, min(samples, PREFILL_SAMPLES), seed)
    notes += more
    return {k: np.stack([np.resize(col, samples) for col in v.T]).reshape(*batch.shape, samples)
            for k, v in stats.items()}, notes
