"""What a step asks of one device (:class:`Local`), and how an operator's cost record is made (:func:`op`).

Counts are for ONE device of a group of ``n`` identical devices: attention and dense weights split ``tp``
ways (``dp = n / tp`` data-parallel replicas of the attention, each with its share of the sequences);
routed experts follow the attention tensor parallelism when ``ep == 1`` and are spread whole over all
devices when ``ep == n``. The busiest data-parallel group sets the step: it holds ceil(B / dp) of the B
sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capsim.model.gemms import Gemm
from capsim.sim.cost import OpCost
from capsim.sim.num import any_true, ceil, f, fullest_group, zeros_like
from capsim.sim.shape import Shape

# Kernel launches per layer (per step for embedding and LM head) of a fused engine; the engine
# profile's per-kernel overhead multiplies these. Fused QKV + output projection; one attention kernel;
# fused-MoE: one grouped GEMM for gate/up, one for down; router GEMM + top-k.
KERNELS_PER_LAYER = {
    "attn_proj": 2, "attn_scores": 1, "norms": 2, "router": 2,
    "routed_experts": 2, "shared_experts": 2, "dense_ffn": 2,
    # expand_kv: kv_b_proj, transpose/split, new_empty + two copy_ into the key tensor
    "mla_expand": 4,
}


@dataclass(slots=True)
class Work:
    """What one step processes over all devices: ``tokens`` (all sequences), ``seqs`` in the batch, attention
    (query, key) ``pairs`` per layer, ``kv_read_tokens`` cached tokens whose K/V (or latent) are read per layer,
    and whether it is a decode step. Arrays broadcast."""

    tokens: np.ndarray | float
    seqs: np.ndarray | float
    pairs: np.ndarray | float
    kv_read_tokens: np.ndarray | float
    decode: bool
    # sparse attention (DeepSeek-V3.2): the (query, key) pairs of full causal attention, which its indexer scores
    # while ``pairs`` counts the keys the attention keeps (None: the same as ``pairs``)
    dense_pairs: np.ndarray | float | None = None


@dataclass(slots=True)
class Local:
    """A step's work on one device: the busiest data-parallel group's share, and the layout."""

    tp: np.ndarray
    ep: np.ndarray
    n: np.ndarray
    is_ep: np.ndarray  # expert parallelism over all devices (ep == n > 1)
    b_g: np.ndarray  # sequences of the busiest data-parallel group
    t_g: np.ndarray  # its tokens
    pairs_g: np.ndarray  # its attention pairs per layer
    kv_g: np.ndarray  # its cached tokens read per layer
    all_tokens: np.ndarray  # the step's tokens over every group (what an EP rank's experts see)
    zero: np.ndarray  # zeros of the broadcast shape of the scenarios
    decode: bool
    expand: bool  # MLA decode re-expands the cached latents (engine: not absorbed)
    qk: float  # per-head query/key and value dims the attention scores use
    v: float
    kv_frac: np.ndarray | float  # share of the KV heads one device caches
    kv_bytes_per_element: np.ndarray
    dense_pairs_g: np.ndarray | float = 0.0  # its pairs of full causal attention (sparse attention's indexer)
    load: np.ndarray | float = 1.0  # the slowest EP rank's expert-token assignments over the mean rank's
    assignments: np.ndarray | float = 0.0  # token-expert pairs the device runs per MoE layer


def local_work(s: Shape, work: Work, *, kv_bytes_per_element, tp, ep, n, mla_absorbed: bool) -> Local:
    tp, ep, n = f(tp), f(ep), f(n)
    if any_true((ep > 1) & (ep != n)):
        raise ValueError("ep must be 1 or equal to the number of devices")
    dp = n / tp
    b_g = fullest_group(work.seqs, dp)
    share = b_g / f(work.seqs)
    t_g, pairs_g, kv_g = f(work.tokens) * share, f(work.pairs) * share, f(work.kv_read_tokens) * share
    expand = bool(s.mla and work.decode and not mla_absorbed)
    qk, v = ((s.qk_dim_decode, s.v_dim_decode) if work.decode and not expand
             else (s.qk_dim_prefill, s.v_dim_prefill))
    kv_frac = 1.0 if s.mla else ceil(s.num_kv_heads / tp) / s.num_kv_heads  # MLA latent: replicated over TP
    return Local(tp, ep, n, ep > 1, b_g, t_g, pairs_g, kv_g, f(work.tokens), zeros_like(t_g, tp, ep),
                 work.decode, expand, qk, v, kv_frac, f(kv_bytes_per_element),
                 pairs_g if work.dense_pairs is None else f(work.dense_pairs) * share)


def on_device(gemms: tuple[Gemm, ...], split) -> tuple[tuple[np.ndarray | float, np.ndarray | float, float], ...]:
    """(K, N, FLOP share) of each matrix when tensor parallelism splits it ``split`` ways (rows of a
    row-parallel matrix, columns of the others)."""
    total = float(sum(g.k * g.n for g in gemms))
    return tuple((g.k / split if g.row_parallel else float(g.k), float(g.n) if g.row_parallel else g.n / split,
                  g.k * g.n / total) for g in gemms)


def op(s: Shape, w: Local, name: str, family: str, flops, weight_bytes, act_bytes, kernels, compute="matmul",
       kv=0.0, rows=np.inf, split=None, **extra) -> OpCost:
    """An operator's cost record, broadcast to the scenarios' shape; a matmul carries its weight matrices as one
    device holds them (split ``tp`` ways unless ``split`` says otherwise)."""
    z = w.zero
    gemms = on_device(s.gemms_of(name), w.tp if split is None else split) if compute == "matmul" else ()
    return OpCost(flops=z + flops, weight_bytes=z + weight_bytes, kv_bytes=z + kv, act_bytes=z + act_bytes,
                  kernels=z + kernels, compute=compute, family=family, rows=z + rows, gemms=gemms,
                  sixteen_bit_share=s.sixteen_share_of(name) if compute == "matmul" else 0.0, **extra)
