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
import os

import numpy as np

from capsim.errors import CapsimError
from capsim.traces.format import DECODE, PREFILL, Trace

DEFAULT_SAMPLES = 200  # batch compositions drawn per prediction
PREFILL_SAMPLES = 50  # a prefill pass covers many tokens: fewer compositions suffice
_PREFILL_CHUNK_TOKENS = 1 << 17  # prompt tokens read from the trace at a time
_CHUNK_SAMPLES = 16  # compositions drawn at a time (the random stream's unit)
_MAX_ENTRIES = 1 << 24  # expert ids counted per bincount call (memory: 8 bytes each)
# prefill: a matrix product of the compositions with the per-sequence tables while (sizes x sequences) is at
# most this multiple of the largest composition, else a running sum per composition (measured crossover on
# bandwidth-bound gather: a product costs ~ sizes x sequences, a running sum ~ the largest composition, and
# a GEMM does about 30 times more work per second here than the gather)
_MATMUL_MAX_RATIO = 32
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
        keys = rng.random((c, n_items))
        if bmax < n_items:  # the bmax smallest keys in order: the first bmax of the sorted order, found in O(n)
            part = np.argpartition(keys, bmax - 1, axis=1)[:, :bmax]
            order = np.take_along_axis(part, np.argsort(np.take_along_axis(keys, part, axis=1), axis=1), axis=1)
        else:
            order = np.argsort(keys, axis=1)
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



def _layer_major(ids: np.ndarray) -> np.ndarray:
    """(tokens, layers, k) -> a contiguous (layers, tokens, k) copy, moving each token's k ids of a layer as one
    block (a transpose of k-byte elements is several times faster than one of bytes)."""
    n, layers, k = ids.shape
    blocks = np.ascontiguousarray(ids).view(np.dtype((np.void, k * ids.itemsize))).reshape(n, layers)
    return np.ascontiguousarray(blocks.T).view(ids.dtype).reshape(layers, n, k)


def _decode_stats(ids: np.ndarray, row_bin: np.ndarray, samples: int, nseg: int, num_experts: int,
                  ep: int) -> dict[str, np.ndarray]:
    """Stats (samples, nseg) of the chosen tokens' routing, averaged over layers: ``ids`` (tokens, layers, k),
    in any order, and per token the first count bin of its (sample, segment between the asked sizes),
    (sample x nseg + segment) x E. One layer at a time (its ids contiguous, its counts small enough to stay in
    cache): one bincount over (sample, segment, expert), a running sum over the segments (the prefixes of the
    asked sizes), the stats of :func:`_stats_from_counts` for that layer."""
    layers, e = ids.shape[1], num_experts
    by_layer = _layer_major(ids)
    base = row_bin[:, None]

    def one_layer(layer: int) -> dict[str, np.ndarray]:
        c = np.bincount((base + by_layer[layer]).ravel(), minlength=samples * nseg * e).reshape(samples, nseg, 1, e)
        return _stats_from_counts(np.cumsum(c, axis=1) if nseg > 1 else c, ep)

    out = {key: np.zeros((samples, nseg)) for key in STATS}
    for st in _pool().map(one_layer, range(layers)):  # numpy releases the GIL: layers run side by side
        for key, v in st.items():
            out[key] += v
    return {key: v / layers for key, v in out.items()}


_POOL: list = []


def _pool():
    """Threads for the per-layer counting (one per CPU, at most 4), made on first use."""
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))))
    return _POOL[0]


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


_PREFILL_CACHE: dict[tuple, np.ndarray] = {}


def _prefill_counts(trace: Trace) -> np.ndarray:
    """Per traced sequence: (layers, E) counts of its prompt tokens' assignments (cached per trace content).
    Read in file order in chunks; counted one layer at a time into (sequence, expert) bins."""
    key = (str(trace.path), trace.meta["content_sha256"])
    if key in _PREFILL_CACHE:
        return _PREFILL_CACHE[key]
    stored = _stored_table(trace)
    if stored is not None:
        _PREFILL_CACHE.clear()
        _PREFILL_CACHE[key] = stored
        return stored
    rows, uniq, start, _ = _sequence_index(trace, PREFILL)
    layers, e, n_seq = trace.expert_ids.shape[1], trace.num_experts, len(uniq)
    seq_of_row = np.repeat(np.arange(n_seq), np.diff(np.append(start, len(rows))))
    in_file = np.argsort(rows, kind="stable")
    rows, seq_of_row = rows[in_file], seq_of_row[in_file]
    counts = np.zeros((layers, n_seq * e), dtype=np.int64)
    for lo in range(0, len(rows), _PREFILL_CHUNK_TOKENS):
        by_layer = _layer_major(np.asarray(trace.expert_ids[rows[lo:lo + _PREFILL_CHUNK_TOKENS]]))
        base = (seq_of_row[lo:lo + _PREFILL_CHUNK_TOKENS] * e)[:, None]
        for layer in range(layers):
            counts[layer] += np.bincount((base + by_layer[layer]).ravel(), minlength=n_seq * e)
    out = np.ascontiguousarray(counts.reshape(layers, n_seq, e).transpose(1, 0, 2)).astype(np.int32)
    _PREFILL_CACHE.clear()
    _PREFILL_CACHE[key] = out
    _store_table(trace, out)
    return out


def _table_file(trace: Trace):
    """Where the per-sequence prompt counts of a trace are kept between processes: capsim's cache folder
    (:mod:`capsim.scenario_cache`), named by the trace's content hash (a verified trace's contents)."""
    from capsim.scenario_cache import folder

    where = folder()
    return None if where is None else where / "trace-tables" / f"{trace.meta['content_sha256']}-prefill.npy"


def _stored_table(trace: Trace) -> np.ndarray | None:
    f = _table_file(trace)
    try:
        table = np.load(f) if f is not None and f.is_file() else None
    except (OSError, ValueError):
        return None
    n_seq = len(_sequence_index(trace, PREFILL)[1])
    ok = table is not None and table.shape == (n_seq, trace.expert_ids.shape[1], trace.num_experts)
    return table if ok else None


def _store_table(trace: Trace, table: np.ndarray) -> None:
    f = _table_file(trace)
    if f is None:
        return
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, table)
        os.replace(tmp, f)
    except OSError:
        pass


def _prefill_table(trace: Trace) -> np.ndarray:
    """The per-sequence prompt counts as a float32 (sequences, layers x E) matrix (cached with the counts)."""
    per_seq = _prefill_counts(trace)
    key = ("table", str(trace.path), trace.meta["content_sha256"])
    if key not in _PREFILL_CACHE:
        _PREFILL_CACHE[key] = per_seq.reshape(len(per_seq), -1).astype(np.float32)
    return _PREFILL_CACHE[key]


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
    seg = _segments(order.shape[1], sizes)
    out = {key: np.empty((samples, len(sizes))) for key in STATS}
    if len(sizes) * n_items <= _MATMUL_MAX_RATIO * order.shape[1]:
        # few sizes: compositions as 0/1 rows over the sequences, one per (sample, segment between asked sizes);
        # a matrix product with the per-sequence tables sums each segment's counts (exact: float32 holds them)
        table = _prefill_table(trace)
        step = _block(n_items * len(sizes), len(sizes) * layers * e)
        for lo in range(0, samples, step):
            blk = order[lo:lo + step]
            n = len(blk)
            sel = np.zeros((n, len(sizes), n_items), dtype=np.float32)
            sel[np.arange(n)[:, None], seg[None, :], blk] = 1.0
            counts = np.cumsum((sel.reshape(-1, n_items) @ table).reshape(n, len(sizes), layers, e), axis=1)
            for key, v in _stats_from_counts(np.rint(counts).astype(np.int64), ep).items():
                out[key][lo:lo + n] = v
    else:  # many sizes: per composition, the sum of each segment of its sequences, then a running sum
        starts = np.concatenate([[0], sizes[:-1]])
        for j in range(samples):
            segs = np.add.reduceat(per_seq[order[j]], starts, axis=0, dtype=np.int64)
            for key, v in _stats_from_counts(np.cumsum(segs, axis=0), ep).items():
                out[key][j] = v
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
    # count bin of each chosen token: (sample x segments + its segment) x E; read the tokens in file order
    row_bin = ((np.arange(samples)[:, None] * len(sizes) + _segments(bmax, sizes)[None, :]) * trace.num_experts).ravel()
    flat = pick.ravel()
    srt = np.argsort(flat, kind="stable")
    ids = np.asarray(trace.expert_ids[flat[srt]])
    stats = _decode_stats(ids, row_bin[srt], samples, len(sizes), trace.num_experts, ep)
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
