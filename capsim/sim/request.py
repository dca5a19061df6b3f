"""A request of a batch: one prefill pass, then decode steps while the context grows.

B sequences of I prompt tokens each produce O output tokens. The prefill pass
processes B x I tokens with causal attention (I (I + 1) / 2 query-key pairs per
sequence and layer) and yields the first output token: TTFT is its time. Decode
step j = 1 .. O - 1 feeds the j-th output token, which attends to I + j cached
positions (fewer in windowed layers, :mod:`capsim.sim.span`). Only the
attention-score operator depends on the context, and its FLOPs and KV bytes are
both proportional to the keys read, so its roofline time is linear in them and
the mean decode step equals the step at the mean number of keys exactly (I + O / 2
without windows): TPOT is that step's time. (O = 1 has no decode step; TPOT is
then reported for the next step, at context I + 1.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capsim.engines import EngineProfile
from capsim.sim.ops import Step, step_costs
from capsim.sim.roofline import Timing, step_time
from capsim.sim.shape import Shape
from capsim.sim.span import decode_keys_per_layer, prefill_pairs_per_layer


@dataclass(frozen=True)
class RequestResult:
    prefill: Step
    decode: Step
    prefill_timing: Timing
    decode_timing: Timing
    ttft_s: np.ndarray
    tpot_s: np.ndarray
    request_s: np.ndarray  # TTFT + (O - 1) x TPOT
    decode_context: np.ndarray  # mean context of a decode step


def mean_decode_context(input_len, output_len) -> np.ndarray:
    i, o = np.asarray(input_len, float), np.asarray(output_len, float)
    return np.where(o >= 2, i + o / 2, i + 1)


def simulate_request(
    s: Shape, *, batch, input_len, output_len, kv_bytes_per_element, peak_flop_per_s, bandwidth_bytes_per_s,
    ring_bandwidth_bytes_per_s, alltoall_bandwidth_bytes_per_s, profile: EngineProfile, tp=1, ep=1, n=1,
    prefill_routing: dict | None = None, decode_routing: dict | None = None,
) -> RequestResult:
    """``*_routing``: measured routing for the phase (keys activated, rank_activated, rank_load of
    :func:`capsim.sim.ops.step_costs`); None means uniform routing."""
    b, i, o = (np.asarray(x, float) for x in (batch, input_len, output_len))
    common = dict(kv_bytes_per_element=kv_bytes_per_element, tp=tp, ep=ep, n=n,
                  mla_absorbed=profile.mla_absorbed >= 0.5)
    timing = dict(peak_flop_per_s=peak_flop_per_s, bandwidth_bytes_per_s=bandwidth_bytes_per_s,
                  ring_bandwidth_bytes_per_s=ring_bandwidth_bytes_per_s,
                  alltoall_bandwidth_bytes_per_s=alltoall_bandwidth_bytes_per_s,
                  layers=s.layers, moe_layers=s.moe_layers, profile=profile)
    pairs = prefill_pairs_per_layer(s.windows, s.layers, i)
    pre = step_costs(s, tokens=b * i, seqs=b, pairs=b * pairs, kv_read_tokens=0.0, decode=False, **common,
                     **(prefill_routing or {}))
    keys = decode_keys_per_layer(s.windows, s.layers, i, o)
    dec = step_costs(s, tokens=b, seqs=b, pairs=b * keys, kv_read_tokens=b * keys, decode=True, **common,
                     **(decode_routing or {}))
    ctx = mean_decode_context(i, o)
    t_pre, t_dec = step_time(pre, **timing), step_time(dec, **timing)
    request = t_pre.step_s + np.maximum(o - 1, 0) * t_dec.step_s
    return RequestResult(pre, dec, t_pre, t_dec, t_pre.step_s, t_dec.step_s, request, ctx)
