"""FLOPs and bytes of one step (a prefill pass or one decode iteration of a batch), per operator, per device.

Pure functions over numpy arrays: every argument except the Shape may be an array of scenarios and the
results broadcast. One builder per operator family (:mod:`~capsim.sim.ops.head`,
:mod:`~capsim.sim.ops.attention`, :mod:`~capsim.sim.ops.experts`, :mod:`~capsim.sim.ops.ffn`,
:mod:`~capsim.sim.ops.collectives`); :func:`step_costs` puts their operators in one table
(:class:`capsim.sim.cost.Step`). The conventions each builder follows are in its module's docstring; each
matmul records its ``rows`` (M, the tokens one weight multiplies) and its weight matrices' shapes as one
device holds them (:mod:`capsim.model.gemms`): a GEMM's efficiency depends on both
(:mod:`capsim.sim.roofline`).
"""

from __future__ import annotations

from capsim.sim.cost import Step
from capsim.sim.ops.attention import attention_ops
from capsim.sim.ops.base import KERNELS_PER_LAYER, Local, Work, local_work
from capsim.sim.ops.collectives import ALLREDUCES_PER_LAYER, collective_ops
from capsim.sim.ops.experts import expert_ops
from capsim.sim.ops.ffn import ffn_ops
from capsim.sim.ops.head import NORM_FLOPS_PER_ELEMENT, embedding_op, lm_head_op, norms_op
from capsim.sim.shape import Shape

OPS = ("embedding", "attn_proj", "mla_expand", "attn_scores", "norms", "router", "routed_experts",
       "shared_experts", "dense_ffn", "lm_head", "tp_allreduce", "ep_dispatch", "ep_combine", "pp_hop")
__all__ = ["ALLREDUCES_PER_LAYER", "KERNELS_PER_LAYER", "NORM_FLOPS_PER_ELEMENT", "OPS", "Local", "Work",
           "step_costs", "work_costs"]


def work_costs(s: Shape, work: Work, *, kv_bytes_per_element, tp=1, ep=1, n=1, pp=1, activated=None,
               rank_activated=None, rank_load=1.0, mla_absorbed=True, dispatch_bytes_per_element=None) -> Step:
    """Per-device costs of one step of ``work``.

    Routing (default: uniform; a trace replay passes measured values, each averaged over MoE layers):
    ``activated``, distinct experts the tokens of one expert group touch per layer; ``rank_activated``,
    distinct experts on the slowest EP rank per layer; ``rank_load``, the slowest EP rank's expert-token
    assignments over the mean rank's (1 = balanced). ``mla_absorbed`` (engine property): False when MLA
    decode re-expands the cached latents each step. ``pp``: pipeline stages (the hop between them).
    ``dispatch_bytes_per_element``: bytes per hidden element the EP dispatch sends (None: the activation dtype's).
    """
    w = local_work(s, work, kv_bytes_per_element=kv_bytes_per_element, tp=tp, ep=ep, n=n,
                   mla_absorbed=mla_absorbed)
    experts, w, dense = expert_ops(s, w, activated, rank_activated, rank_load)
    ops = {"embedding": embedding_op(s, w), **attention_ops(s, w), "norms": norms_op(s, w), **experts,
           **ffn_ops(s, w), "lm_head": lm_head_op(s, w), **collective_ops(s, w, pp, dispatch_bytes_per_element)}
    return Step({k: ops[k] for k in OPS}, dense["activated"], dense["all_weight_bytes"], dense["all_flops"], w)


def step_costs(s: Shape, *, tokens, seqs, pairs, kv_read_tokens, decode: bool, **kw) -> Step:
    """:func:`work_costs` of a step given by its counts: ``tokens`` processed (all sequences), ``seqs`` in the
    batch, attention (query, key) ``pairs`` per layer and ``kv_read_tokens`` cached tokens read per layer,
    over all sequences."""
    return work_costs(s, Work(tokens, seqs, pairs, kv_read_tokens, decode), **kw)
