"""The figures of a request, computed once for predict (means and percentiles) and sweep (columns).

Utilisation per MoE-CAP (arXiv 2412.07067), done right, for one step on one of n identical devices:

S-MBU = bytes the step must read (weights of the ACTIVATED experts, every other
        weight, the KV cache; activations excluded) / (step time x peak bandwidth)
S-MFU = FLOPs executed (tokens x top-k experts, attention included)
        / (step time x DENSE peak FLOP/s of the compute dtype); when operators run at
        different peaks (matmuls in fp8, attention in bf16), each operator's FLOPs are
        counted against its own peak: sum(FLOPs_op / peak_op) / step time, which is
        MoE-CAP's figure when all share one dtype and can never exceed 1
MBU, MFU: the same with every routed expert counted as read (MBU) or run by every
token (MFU), the dense-model figures MoE-CAP shows overstate the work of a
sparse step; they may exceed 1, which is the point.
Per-device numerators over per-device peaks equal the all-device formulas
because the devices are symmetric.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from capsim.sim.cost import LINK, Step
from capsim.sim.num import div, f
from capsim.sim.roofline import Timing

if TYPE_CHECKING:
    from capsim.scenario import Scenario
    from capsim.sim.request import RequestResult


def _compute_ops(step: Step):
    return [op for op in step.ops.values() if op.compute != LINK]


def _peak_seconds(step: Step, peaks) -> np.ndarray:
    """Seconds the step's FLOPs take at each operator's own dense peak (``peaks``: per class, or one number)."""
    get = (lambda op: peaks[op.compute]) if hasattr(peaks, "__getitem__") else (lambda op: peaks)
    return sum(div(op.flops, f(get(op))) for op in _compute_ops(step))


def utilisation(step: Step, timing: Timing, *, bandwidth_bytes_per_s, peak_flop_per_s) -> dict[str, np.ndarray]:
    """``peak_flop_per_s``: the peaks the step ran at per operator class (Peaks or a dict), or one number."""
    t = timing.step_s
    bw = f(bandwidth_bytes_per_s)
    matmul = peak_flop_per_s["matmul"] if hasattr(peak_flop_per_s, "__getitem__") else peak_flop_per_s
    ops = _compute_ops(step)
    needed = sum(op.weight_bytes + op.kv_bytes for op in ops)
    busy = _peak_seconds(step, peak_flop_per_s)
    routed = step.ops["routed_experts"]
    dense_bytes = needed - routed.weight_bytes + step.all_expert_weight_bytes
    dense_busy = busy + div(step.all_expert_flops - routed.flops, f(matmul))
    return {
        "s_mbu": div(needed, t * bw),
        "s_mfu": div(busy, t),
        "mbu": div(dense_bytes, t * bw),
        "mfu": div(dense_busy, t),
        "bytes_per_device": needed,
        "flops_per_device": sum(op.flops for op in ops),
    }


def request_metrics(sc: Scenario, res: RequestResult, batch, input_len, output_len) -> dict[str, np.ndarray]:
    """Per request (arrays of the batch's shape): latencies, rates and utilisation. With sampled batch
    compositions (a trace replay: the result's last axis) times and utilisation are means over the samples
    and rates are taken from the mean times."""
    b, i, o = f(batch), f(input_len), f(output_len)
    sampled = np.ndim(res.ttft_s) > np.ndim(b)

    def mean(x):
        return np.mean(x, axis=-1) if sampled else x

    kw = dict(bandwidth_bytes_per_s=sc.target.memory_bandwidth_bytes_per_s, peak_flop_per_s=sc.peaks)
    # the prefill's utilisation is one chunk's work over one chunk's share of the time (chunks are equal)
    pre_t = replace(res.prefill_timing, step_s=res.prefill_timing.step_s / res.prefill_chunks)
    pre = {k: mean(v) for k, v in utilisation(res.prefill, pre_t, **kw).items()}
    dec = {k: mean(v) for k, v in utilisation(res.decode, res.decode_timing, **kw).items()}
    ttft, tpot, request = mean(res.ttft_s), mean(res.tpot_s), mean(res.request_s)
    nodes = sc.whole.nodes
    return {
        "ttft_s": ttft, "tpot_s": tpot, "request_latency_s": request,
        "prefill_tokens_per_s": b * i / ttft, "decode_tokens_per_s": b / tpot,
        "decode_tokens_per_s_per_user": 1.0 / tpot,
        "prefill_tokens_per_s_per_node": b * i / ttft / nodes, "decode_tokens_per_s_per_node": b / tpot / nodes,
        # the batch served start to finish: its output tokens over the request latency (prefill, then decode)
        "output_tokens_per_s_total": b * o / request,
        "s_mbu": dec["s_mbu"], "s_mfu": dec["s_mfu"], "mbu": dec["mbu"], "mfu": dec["mfu"],
        "activated_experts_per_layer": mean(res.decode.activated_experts),
        "activated_experts_per_layer_prefill": mean(res.prefill.activated_experts),
        "prefill": pre, "decode": dec,
    }
