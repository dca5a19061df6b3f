"""Routing statistics of the tiny model trained by scripts/train_tiny_moe.py: per MoE layer the share of top-k
assignments per expert, their entropy, and the byte-expert mutual information."""

from __future__ import annotations

import math

import numpy as np
import torch


@torch.no_grad()
def routing_stats(model, batches: list[torch.Tensor], top_k: int, n_experts: int) -> dict:
    """Per MoE layer: share of top-k assignments per expert, max/mean, plus byte->expert mutual information."""
    model.eval()
    counts = None
    joint = None
    mass = None  # summed top-k router probability per layer (uniform router: k / n_experts)  # [layer, byte, expert] assignment counts
    for x in batches:
        out = model(input_ids=x, output_router_logits=True, use_cache=False)
        logits = out.router_logits  # tuple over layers of (batch*seq, n_experts)
        if counts is None:
            counts = np.zeros((len(logits), n_experts), dtype=np.int64)
            joint = np.zeros((len(logits), 256, n_experts), dtype=np.int64)
            mass = np.zeros(len(logits))
        tok = x.reshape(-1).numpy()
        for li, lg in enumerate(logits):
            probs = torch.softmax(lg.float(), dim=-1)
            top = torch.topk(probs, top_k, dim=-1)
            idx = top.indices.numpy()  # (tokens, k)
            mass[li] += float(top.values.sum())
            counts[li] += np.bincount(idx.reshape(-1), minlength=n_experts)
            np.add.at(joint[li], (np.repeat(tok, top_k), idx.reshape(-1)), 1)
    model.train()
    layers = []
    for li in range(counts.shape[0]):
        share = counts[li] / counts[li].sum()
        p_e = share
        ent = float(-(p_e[p_e > 0] * np.log2(p_e[p_e > 0])).sum())
        pj = joint[li] / joint[li].sum()
        pb = pj.sum(axis=1, keepdims=True)
        pe = pj.sum(axis=0, keepdims=True)
        nz = pj > 0
        mi = float((pj[nz] * np.log2(pj[nz] / (pb @ pe)[nz])).sum())
        layers.append(
            {
                "layer": li,
                "expert_share": [round(float(s), 5) for s in share],
                "max_over_mean": round(float(share.max() * n_experts), 4),
                "min_over_mean": round(float(share.min() * n_experts), 4),
                "entropy_bits": round(ent, 4),
                "entropy_max_bits": round(math.log2(n_experts), 4),
                "mutual_information_byte_expert_bits": round(mi, 4),
                "mean_topk_router_prob_mass": round(float(mass[li] / (counts[li].sum() / top_k)), 4),
            }
        )
    n_tokens = int(sum(x.numel() for x in batches))
    return {"n_tokens": n_tokens, "top_k": top_k, "layers": layers}
