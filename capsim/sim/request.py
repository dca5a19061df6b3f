"""The request pipeline: the ONE place step costs become a request's time.

    step costs (capsim.sim.ops) -> step time (capsim.sim.roofline, collectives on their links)
    -> offloaded experts (capsim.sim.offload) -> pipeline stages (capsim.sim.pipeline) -> request

B sequences of I prompt tokens each produce O output tokens. The prefill pass processes B x I tokens with
causal attention (I (I + 1) / 2 query-key pairs per sequence and layer) and yields the first output token:
TTFT is its time. An engine that prefills at most ``max_batched_tokens`` per step (chunked prefill, llama.cpp's
n_ubatch) takes c = ceil(B x I / max_batched_tokens) equal steps of B x I / c tokens, each reading the weights
its tokens touch (the LM head is then counted once per chunk: a small excess). Decode step j = 1 .. O - 1 feeds the j-th output token, which attends to I + j cached
positions (fewer in windowed layers, :mod:`capsim.sim.span`). Only the attention-score operator depends on
the context, and its FLOPs and KV bytes are both proportional to the keys read, so its roofline time is
linear in them and the mean decode step equals the step at the mean number of keys exactly (I + O / 2
without windows): TPOT is that step's time. (O = 1 has no decode step; TPOT is then reported for the next
step, at context I + 1.) The request takes TTFT + (O - 1) x TPOT.

Speculative decoding / multi-token prediction (``spec_tokens`` k > 0, acceptance a per draft token): each step
drafts k tokens per sequence, then verifies k + 1 in one pass (the decode step above with k + 1 query tokens per
sequence, reading the KV cache once) and keeps on average E = (1 - a^(k+1)) / (1 - a) tokens (k + 1 when a = 1;
Leviathan, Kalman and Matias, "Fast Inference from Transformers via Speculative Decoding", ICML 2023, eq. 1).
The draft is DeepSeek-V3's MTP module (D = 1: one Transformer block sharing the embedding and output head;
arXiv 2412.19437 section 2.2), priced as one decoder layer's share (1 / layers) of a plain decode step per draft
token. TPOT = (verify + k x draft) / E.

predict, sweep, provision, validation and the benchmarks all price through :func:`simulate` (or
:func:`simulate_step` for one measured step); a test checks nothing else calls ``step_time``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

import numpy as np

from capsim.sim import pipeline
from capsim.sim.cost import Step
from capsim.sim.num import any_true, ceil, f, maximum, where
from capsim.sim.offload import OffloadTiming, offload_step
from capsim.sim.ops import Work, work_costs
from capsim.sim.roofline import Timing, step_time
from capsim.sim.span import decode_keys_per_layer, prefill_pairs_per_layer

if TYPE_CHECKING:
    from capsim.placement import Residency
    from capsim.routing import Routing
    from capsim.scenario import Scenario


# Bytes per hidden element the EP dispatch sends (--ep-dispatch): the activation dtype's, or DeepEP's FP8
# dispatch (deepseek-ai/DeepEP README: "FP8 dispatching and BF16 combining"): 1 byte per element plus one fp32
# scale per 128 (SGLang's sglang_per_token_group_quant_fp8, group size 128) = 1 + 4 / 128
DISPATCH_BYTES = {"bf16": None, "fp8": 1.0 + 4.0 / 128.0}


@dataclass(frozen=True)
class RequestResult:
    prefill: Step
    decode: Step
    prefill_timing: Timing  # step_s: the phase's time (TTFT), offload and pipeline included
    decode_timing: Timing  # step_s: TPOT
    ttft_s: np.ndarray
    tpot_s: np.ndarray
    request_s: np.ndarray  # TTFT + (O - 1) x TPOT
    decode_context: np.ndarray  # mean context of a decode step
    prefill_offload: OffloadTiming | None = None
    decode_offload: OffloadTiming | None = None
    microbatches: np.ndarray | float = 1.0  # pipeline micro-batches, min(B, pp)
    tokens_per_step: np.ndarray | float = 1.0  # output tokens a decode step keeps per sequence (speculation: E)
    prefill_chunks: np.ndarray | float = 1.0  # steps the prefill takes (chunked prefill); ``prefill`` is one of them


def prefill_chunks(tokens, max_batched_tokens: float):
    """Steps a prefill of ``tokens`` takes in an engine that processes at most ``max_batched_tokens`` per step
    (vLLM's and SGLang's chunked prefill, llama.cpp's n_ubatch): each chunk re-reads the weights it touches."""
    return ceil(f(tokens) / max_batched_tokens) if max_batched_tokens > 0 else 1.0


def mean_decode_context(input_len, output_len) -> np.ndarray:
    i, o = f(input_len), f(output_len)
    return where(o >= 2, i + o / 2, i + 1)


def _costs(sc: Scenario, work: Work, routing: dict | None) -> Step:
    return work_costs(sc.shape, work, kv_bytes_per_element=sc.kv_bytes, tp=sc.tp, ep=sc.ep, n=sc.n, pp=sc.pp,
                      dispatch_bytes_per_element=DISPATCH_BYTES[sc.query.ep_dispatch],
                      mla_absorbed=sc.profile.mla_absorbed, **(routing or {}))


def simulate_step(sc: Scenario, work: Work, routing: dict | None = None) -> tuple[Step, Timing]:
    """One step of ``work`` on ``sc`` (a measured prefill pass or decode step): its costs and its time."""
    step = _costs(sc, work, routing)
    return step, step_time(step, sc)


def _phase(sc: Scenario, step: Step, timing: Timing, factor, hit_rate) -> tuple[Timing, OffloadTiming | None]:
    """The phase's time from its step: the stage work (the step without the hop between stages), with the
    offloaded experts' misses, over the pipeline's stages, plus the hop."""
    hop = timing.transfer_s["pp_hop"]
    work = timing.step_s - hop
    off = None
    if hit_rate is not None:
        o = sc.offload
        kw = dict(hit_rate=hit_rate, link_bytes_per_s=o.link_bytes_per_s, host_bandwidth_bytes_per_s=o.host_bandwidth_bytes_per_s,
                  host_peak_flop_per_s=o.host_peak_flop_per_s, tp=sc.tp, profile=sc.profile, ssd=o.ssd, step_s=work,
                  host_threads=o.host_threads)
        off = offload_step(step, timing, sc.shape, mode=o.mode, **kw)
        least = sc.profile.host_op_offload_min_tokens
        if o.mode == "cpu" and least > 0 and any_true(step.local.t_g >= least):
            # the engine moves a large step's CPU experts to the GPU: their weights cross the link instead
            fetch = offload_step(step, timing, sc.shape, mode="gpu-fetch", **kw)
            moved = step.local.t_g >= least
            off = OffloadTiming(*(where(moved, getattr(fetch, k.name), getattr(off, k.name)) for k in fields(off)))
        work = off.step_s
    seconds = work * factor + hop
    cats = dict(timing.by_category_s)
    if sc.pp > 1:
        cats = {k: (v - hop) * factor + hop if k == "transfer" else v * factor for k, v in cats.items()}
    return replace(timing, step_s=seconds, by_category_s=cats), off


def simulate(sc: Scenario, batch, input_len, output_len, routing: Routing | None = None,
             residency: Residency | None = None) -> RequestResult:
    """A request of ``batch`` sequences (arrays broadcast) on ``sc``. ``routing``: measured routing per phase,
    (rows, samples) arrays (:func:`capsim.routing.replay`; None: uniform); ``residency``: where the routed
    experts are, when the scenario offloads them (:func:`capsim.placement.residency`)."""
    b, i, o = (f(x) for x in (batch, input_len, output_len))
    h_pre = h_dec = None
    if residency is not None:
        h_pre, h_dec = f(residency.hit_rate_prefill), f(residency.hit_rate_decode)
    if routing is not None:  # one more axis: the sampled batch compositions
        b, i, o = (np.asarray(x, float)[..., None] for x in (b, i, o))
        h_pre, h_dec = (None if h is None else np.asarray(h, float)[..., None] for h in (h_pre, h_dec))
    s, pp = sc.shape, sc.pp
    m = pipeline.microbatches(b, pp)
    mb = ceil(b / m)  # sequences per micro-batch
    chunks = prefill_chunks(mb * i, sc.profile.max_batched_tokens)
    full = s.cache_windows or s.windows  # what a dense attention would see (sparse attention's indexer scores it)
    pre = _costs(sc, Work(mb * i / chunks, mb, mb * prefill_pairs_per_layer(s.windows, s.layers, i) / chunks, 0.0,
                          False, mb * prefill_pairs_per_layer(full, s.layers, i) / chunks),
                 routing.prefill if routing else None)
    keys = decode_keys_per_layer(s.windows, s.layers, i, o)
    dense_keys = decode_keys_per_layer(full, s.layers, i, o)
    k, accept = sc.query.spec_tokens, sc.query.spec_acceptance
    q = 1 + k  # query tokens per sequence in a decode (verify) step
    dec = _costs(sc, Work(mb * q, mb, mb * q * keys, mb * keys, True, mb * q * dense_keys),
                 routing.decode if routing else None)
    t_pre, off_pre = _phase(sc, pre, step_time(pre, sc), pipeline.prefill_factor(m, pp) * chunks, h_pre)
    t_dec, off_dec = _phase(sc, dec, step_time(dec, sc), pipeline.decode_factor(m, pp), h_dec)
    tpot, kept = t_dec.step_s, 1.0
    if k:
        plain = _costs(sc, Work(mb, mb, mb * keys, mb * keys, True, mb * dense_keys),
                       routing.decode if routing else None)
        draft = k * step_time(plain, sc).step_s / s.layers
        kept = float(k + 1) if accept >= 1.0 else (1.0 - accept ** (k + 1)) / (1.0 - accept)
        tpot = (t_dec.step_s + draft) / kept
    request = t_pre.step_s + maximum(o - 1, 0.0) * tpot
    return RequestResult(pre, dec, t_pre, t_dec, t_pre.step_s, tpot, request, mean_decode_context(i, o),
                         off_pre, off_dec, m, kept, chunks)
