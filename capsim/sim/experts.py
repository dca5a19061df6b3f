"""How many distinct routed experts a step touches when no trace is given.

Under uniform, independent top-k routing each token picks a given expert with
probability k/E, so the expected number of experts used by at least one of T
tokens is E (1 - (1 - k/E)^T) per layer (MoE-CAP, arXiv 2412.07067; see
shared/reference/moecap_metrics.md). It is k at T = 1 and tends to E.
The traces issue replaces this with the union measured on real routing.
"""

from __future__ import annotations

import math

import numpy as np


def expected_activated(num_experts, top_k, tokens):
    """Expected distinct experts per layer touched by ``tokens`` tokens (broadcasts over arrays)."""
    if not any(isinstance(x, np.ndarray) for x in (num_experts, top_k, tokens)):  # one scenario: plain floats
        e, k, t = float(num_experts), float(top_k), float(tokens)
        if not (e > 0 and t > 0):
            return 0.0
        return e if k >= e else e * -math.expm1(t * math.log1p(-k / e))
    e = np.asarray(num_experts, dtype=float)
    k = np.asarray(top_k, dtype=float)
    t = np.asarray(tokens, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = e * -np.expm1(t * np.log1p(-k / e))  # E (1 - (1 - k/E)^T), accurate for small k/E
    out = np.where(k >= e, e, out)  # every expert chosen by every token
    return np.where((e > 0) & (t > 0), out, 0.0)


def expected_activated_per_rank(num_experts, top_k, tokens, ep):
    """Expected distinct experts on one of ``ep`` ranks holding E/ep experts each (uniform routing)."""
    return expected_activated(num_experts, top_k, tokens) / np.asarray(ep, dtype=float)


# ----------------------------------------------------------------------- the busiest expert-parallel rank
NORMAL_FROM = 50.0  # mean count above which a binomial's maximum is taken from the normal approximation
_TAIL_SD = 12.0  # the exact sum stops this many standard deviations above the mean (the rest is < 1e-30)
_MAX_NORMAL: dict[int, float] = {}


def max_std_normal(copies: int) -> float:
    """E[max of ``copies`` independent standard normals]: the integral of x copies phi(x) Phi(x)^(copies-1) on
    a grid of 0.001 over [-12, 12] (exact to 1e-6; 1.4236 for 8, Blom's table)."""
    if copies not in _MAX_NORMAL:
        x = np.linspace(-12.0, 12.0, 24_001)
        cdf = 0.5 * np.array([math.erfc(-v / math.sqrt(2.0)) for v in x])
        pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        _MAX_NORMAL[copies] = float(np.sum(x * copies * pdf * cdf ** (copies - 1)) * (x[1] - x[0]))
    return _MAX_NORMAL[copies]


def max_binomial(n: int, p: float, copies: int) -> float:
    """E[max of ``copies`` independent Binomial(n, p) counts]: sum over j >= 0 of 1 - F(j)^copies (F the
    binomial CDF, summed exactly from its pmf recurrence); above NORMAL_FROM mean counts, mean + sd x
    E[max of copies standard normals], at most n."""
    mu, var = n * p, n * p * (1.0 - p)
    if copies <= 1 or var <= 0.0:
        return mu
    if mu > NORMAL_FROM:
        return min(float(n), mu + math.sqrt(var) * max_std_normal(copies))
    top = min(n, int(math.ceil(mu + _TAIL_SD * math.sqrt(var) + 20)))
    pmf, cdf, total = math.exp(n * math.log1p(-p)), 0.0, 0.0
    for j in range(top + 1):
        cdf += pmf
        total += 1.0 - min(1.0, cdf) ** copies
        pmf *= (n - j) / (j + 1) * p / (1.0 - p)
    return min(float(n), total)  # rounding in the sum must not put more than n on a rank


def busiest_rank(num_experts, top_k, tokens, ep) -> tuple[np.ndarray, np.ndarray]:
    """Under uniform routing, the slowest of ``ep`` ranks holding E/ep experts each, for a step of ``tokens``
    tokens: its expected distinct activated experts (each of its E/ep experts used with probability
    q = 1 - (1 - k/E)^T, as a Binomial(E/ep, q) count) and its expected token-expert assignments over the mean
    (each of the T k assignments on a rank with probability 1/ep: Binomial(T k, 1/ep)); the maxima of ep such
    counts taken as independent (:func:`max_binomial`). The step waits for this rank, not the mean one."""
    e, k, t, r = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (num_experts, top_k, tokens, ep)))
    key = np.stack([e.ravel(), k.ravel(), np.rint(t.ravel()), r.ravel()], axis=1)
    uniq, back = np.unique(key, axis=0, return_inverse=True)
    act, load = np.empty(len(uniq)), np.empty(len(uniq))
    for i, (ei, ki, ti, ri) in enumerate(uniq):
        ei, ki, ti, ri = int(ei), int(ki), int(ti), max(1, int(ri))
        if ei <= 0 or ti <= 0 or ki <= 0:
            act[i], load[i] = 0.0, 1.0
            continue
        q = 1.0 if ki >= ei else -math.expm1(ti * math.log1p(-ki / ei))
        # bounds the independence estimate misses: some rank holds an activated expert (>= 1) and the busiest
        # rank takes at least its whole share of the assignments, ceil(T k / ep)
        act[i] = max(1.0, max_binomial(ei // ri, q, ri))
        busiest = max(float(math.ceil(ti * ki / ri)), max_binomial(ti * ki, 1.0 / ri, ri))
        # and at most: a token's k distinct experts put at most min(k, E/ep) of its assignments on one rank
        load[i] = min(busiest, ti * min(ki, ei // ri)) / (ti * ki / ri)
    return act[back.ravel()].reshape(e.shape), load[back.ravel()].reshape(e.shape)
