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
