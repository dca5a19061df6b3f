"""How many cached positions attention reads, averaged over layers, when some layers use windows.

A layer with window w (0 = full attention) lets the token at position p (1-based)
attend to min(p, w) positions; a linear-attention layer (w < 0, :data:`capsim.model.spec.LINEAR`) keeps no
K/V and attends to none (its fixed per-sequence state is priced apart). Sums over positions have closed forms, so the
averages over a prompt or over the decode steps of a request are exact.
"""

from __future__ import annotations

import math

from capsim.sim.num import clip, f, maximum, minimum, where


def _sum_min(lo, hi, w):
    """Sum over integer p in [lo, hi] of min(p, w), with w = 0 meaning no window (w = inf)."""
    lo, hi = f(lo), f(hi)
    if w < 0:  # linear attention: no (query, key) pairs
        return 0.0 * lo * hi
    w = math.inf if w == 0 else float(w)
    below_hi = clip(hi, lo - 1, w)  # positions lo..below_hi count p
    n_below = maximum(below_hi - lo + 1, 0.0)
    s_below = n_below * (lo + below_hi) / 2
    n_above = maximum(hi - maximum(lo - 1, w), 0.0)  # positions above w count w
    s_above = where(n_above > 0, n_above * (w if math.isfinite(w) else 0.0), 0.0)
    return s_below + s_above


def prefill_pairs_per_layer(windows: tuple[tuple[int, int], ...], layers: int, input_len):
    """Causal (query, key) pairs of one sequence's prompt, averaged over layers."""
    return sum(n * _sum_min(1, input_len, w) for w, n in windows) / layers


def decode_keys_per_layer(windows: tuple[tuple[int, int], ...], layers: int, input_len, output_len):
    """Keys one decode step reads per sequence, averaged over layers and over the request's decode steps.

    Step j = 1 .. O - 1 attends from position I + j; with O = 1 the next step (I + 1) stands in.
    """
    i, o = f(input_len), f(output_len)
    steps = maximum(o - 1, 1.0)
    hi = i + steps
    return sum(n * _sum_min(i + 1, hi, w) for w, n in windows) / layers / steps


def cached_tokens_per_layer(windows: tuple[tuple[int, int], ...], layers: int, context):
    """KV entries one sequence keeps, averaged over layers (windowed layers keep their window)."""
    c = f(context)
    return sum(n * (c if w == 0 else minimum(c, float(max(w, 0)))) for w, n in windows) / layers


def chunk_pairs_per_layer(windows: tuple[tuple[int, int], ...], layers: int, context, tokens):
    """(query, key) pairs of ``tokens`` new positions after ``context`` cached ones (a prefill chunk, or a decode
    token: tokens = 1), averaged over layers."""
    c = f(context)
    return sum(n * _sum_min(c + 1, c + f(tokens), w) for w, n in windows) / layers
