"""Pipeline parallelism (``--pp``): layers split into stages over groups of devices.

``n`` devices form ``pp`` stages of ``n / pp`` devices each (tensor / expert / data parallel inside a
stage). The batch of B sequences is cut into ``m = min(B, pp)`` micro-batches of ``ceil(B / m)``
sequences (no more micro-batches than sequences) that stream through the stages (GPipe, Huang et al.,
arXiv:1811.06965). With ``W`` the time of one micro-batch through the whole model on one stage group
(the sum of its stages' times) a stage takes ``W / pp``, and:

- prefill: the last of ``m`` micro-batches leaves the last stage after ``m + pp - 1`` stage times (fill,
  then one per micro-batch), plus its hidden states crossing the ``pp - 1`` stage boundaries:
  ``TTFT = W (m + pp - 1) / pp + hops``. One sequence (m = 1) costs the whole model once plus the hops;
  m = pp costs (2 pp - 1) / pp of it;
- decode: a micro-batch's next token needs its pass through every stage (``pp`` stage times), and a stage
  serves the ``m`` micro-batches in turn, so a token comes every ``max(m, pp)`` stage times plus the hops:
  ``TPOT = W max(m, pp) / pp + hops``; with fewer sequences than stages the stages wait on each other;
- each device holds the layers of its stage: the busiest stage has ``ceil(L / pp)`` of the ``L`` layers, and
  its share of the weights and KV cache is that fraction (the embedding and LM head are counted as evenly
  spread, a small approximation stated in the report).

The hops are the step's ``pp_hop`` operator (:mod:`capsim.sim.ops.collectives`), priced on the topology
graph's route between adjacent stages (every boundary sending at once; the NICs when stages are nodes).
"""

from __future__ import annotations

import math

import numpy as np

from capsim.sim.num import f, maximum, minimum


def microbatches(batch, pp) -> np.ndarray:
    """Micro-batches a batch is cut into: min(B, pp)."""
    return minimum(f(batch), float(pp))


def microbatch(batch, pp):
    """Sequences per micro-batch, ceil(B / min(B, pp)): an int for an int batch, an array for an array."""
    if isinstance(batch, (int, np.integer)):
        return math.ceil(batch / min(batch, pp))
    b = np.asarray(batch, float)
    return np.ceil(b / np.minimum(b, pp))


def stage_fraction(layers: int, pp: int) -> float:
    """Share of the model's layers the busiest stage holds."""
    return math.ceil(layers / pp) / layers


def prefill_factor(m, pp) -> np.ndarray:
    """TTFT over the whole-model time of one micro-batch (hops apart): (m + pp - 1) / pp."""
    return (f(m) + pp - 1) / pp


def decode_factor(m, pp) -> np.ndarray:
    """TPOT over the whole-model time of one micro-batch (hops apart): max(m, pp) / pp."""
    return maximum(f(m), float(pp)) / pp
