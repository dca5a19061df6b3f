"""Pipeline parallelism (``--pp``): layers split into stages over groups of devices.

``n`` devices form ``pp`` stages of ``n / pp`` devices each (tensor / expert / data parallel inside
a stage). The batch is cut into ``pp`` micro-batches that stream through the stages, so in decode
every stage is busy with a different micro-batch:

- a token's step (TPOT) is the whole model at micro-batch ``ceil(B / pp)`` on one stage group (the
  sum of the stages' times) plus ``pp - 1`` hops of its hidden states to the next stage, over the
  topology graph's route from a stage's last device to the next stage's first (every boundary
  sending at once; the InfiniBand NICs when stages are nodes, ``capsim.hardware.target.stage``);
- decode throughput is ``B / TPOT`` (no bubble once the pipeline is full);
- the prefill pass of ``pp`` micro-batches takes ``(2 pp - 1)`` stage times (GPipe fill and drain,
  Huang et al., arXiv:1811.06965): ``prefill(B / pp) x (2 pp - 1) / pp``;
- each device holds the layers of its stage: the busiest stage has ``ceil(L / pp)`` of the ``L``
  layers, and its share of the weights and KV cache is that fraction (the embedding and LM head
  are counted as evenly spread, a small approximation stated in the report).
"""

from __future__ import annotations

import math

import numpy as np


def microbatch(batch, pp: int):
    """Sequences per micro-batch, ceil(B / pp): an int for an int batch, an array for an array of batches."""
    if isinstance(batch, (int, np.integer)):
        return math.ceil(batch / pp)
    return np.ceil(np.asarray(batch, float) / pp)


def stage_fraction(layers: int, pp: int) -> float:
    """Share of the model's layers the busiest stage holds."""
    return math.ceil(layers / pp) / layers


def hop_seconds(tokens, hidden: int, act_bytes: float, link_bytes_per_s: float, pp: int) -> np.ndarray:
    """``pp - 1`` point-to-point sends of a micro-batch's hidden states between adjacent stages."""
    return (pp - 1) * np.asarray(tokens, float) * hidden * act_bytes / link_bytes_per_s


def prefill_seconds(prefill_microbatch_s, pp: int) -> np.ndarray:
    return np.asarray(prefill_microbatch_s, float) * (2 * pp - 1) / pp
