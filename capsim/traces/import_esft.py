"""Import DeepSeek's ESFT expert-routing logs (deepseek-ai/ESFT, MIT licence) as a capsim trace.

``results/expert_scores/{domain}/expert_weights_{L}.txt`` holds, for MoE layer L (1..26; layer 0 of the
27-layer model is dense), one line per sequence: the top-6 expert ids of every token, a blank field, then
their gate weights (``scripts/expert/generate_expert_config.py``'s ``parse_line`` reads it so: ids and weights
split at ``"\\t\\t"``, then at ``"\\t"``). Line i of every layer file is the same sequence (checked: token
counts agree). ``get_expert_scores.py`` ran the model (``deepseek-ai/ESFT-vanilla-lite``, the DeepSeek-V2-Lite
shape: 64 routed experts, top-6) teacher-forced over the chat-formatted training samples of each domain.

How capsim treats what the data does not say:
- **Prefill and decode.** The model read each sample in one forward pass, so there is no phase. A token's
  routing depends only on it and the tokens before it, so the teacher-forced routing of a token is the
  routing it gets when it is generated and when it is prefilled. The prompt/response boundary is not in the
  logs: capsim marks the second half of each sequence's non-template tokens as decode (the tokens a
  decode step draws from) and the rest as prefill.
- **The chat template.** Every sample begins with the same template tokens, routed identically in every
  layer. Positions where every sequence of a domain routes identically in every layer (the common prefix)
  stay in the prompt (they are real prompt tokens) but are never decode tokens. "Identically" allows for
  bf16 near-ties: the template is the leading run of positions where, averaged over layers, at least
  TEMPLATE_AGREEMENT of the sequences share the layer's most common top-6 set (10-17 positions per domain).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

import numpy as np

from capsim.errors import CapsimError
from capsim.traces.format import DECODE, PREFILL, write_trace

DOMAINS = ("intent", "law", "summary", "translation")
MOE_LAYERS = 26  # expert_weights_1 .. expert_weights_26 (generate_expert_config.py: N_LAYERS = 26)
TOP_K = 6  # generate_expert_config.py: TOP_K = 6
NUM_EXPERTS = 64  # generate_expert_config.py: N_EXPERTS = 64
MODEL_ID = "deepseek-ai/DeepSeek-V2-Lite"  # the shape; the checkpoint was deepseek-ai/ESFT-vanilla-lite
REPOSITORY = "https://github.com/deepseek-ai/ESFT"
# Template positions: measured on the four domains, every sequence's first 10-17 positions agree in 0.86-1.0 of
# the sequences per layer (bf16 near-ties flip a few; identical tokens would agree in all), the next ones in
# at most 0.74 and mostly under 0.2: the threshold sits between.
TEMPLATE_AGREEMENT = 0.85


def parse_line(line: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, 6) expert ids and gate weights of one sequence's line."""
    try:
        ids_text, weights_text = line.rstrip("\n").split("\t\t")
        ids = np.array(ids_text.split("\t"), dtype=np.int64)
        weights = np.array(weights_text.split("\t"), dtype=np.float64)
    except ValueError as err:
        raise CapsimError(f"{where}: not an ESFT expert-weights line ({err})") from None
    if len(ids) % TOP_K or len(ids) != len(weights) or ids.min() < 0 or ids.max() >= NUM_EXPERTS:
        raise CapsimError(f"{where}: expected {TOP_K} ids in [0, {NUM_EXPERTS}) and a weight for each per token")
    return ids.reshape(-1, TOP_K), weights.reshape(-1, TOP_K)


def read_domain(read, domain: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per sequence of ``domain``: ids and weights (tokens, layers, 6). ``read(path) -> text``."""
    per_layer = []
    for layer in range(1, MOE_LAYERS + 1):
        path = f"results/expert_scores/{domain}/expert_weights_{layer}.txt"
        lines = [x for x in read(path).splitlines() if x.strip()]
        per_layer.append([parse_line(x, f"{path}:{i + 1}") for i, x in enumerate(lines)])
    n = {len(x) for x in per_layer}
    if len(n) != 1:
        raise CapsimError(f"{domain}: layer files hold different numbers of sequences ({sorted(n)})")
    ids, weights = [], []
    for s in range(n.pop()):
        lens = {per_layer[layer][s][0].shape[0] for layer in range(MOE_LAYERS)}
        if len(lens) != 1:
            raise CapsimError(f"{domain}: sequence {s} has different token counts across layers {sorted(lens)}")
        ids.append(np.stack([per_layer[layer][s][0] for layer in range(MOE_LAYERS)], axis=1))
        weights.append(np.stack([per_layer[layer][s][1] for layer in range(MOE_LAYERS)], axis=1))
    return ids, weights


def template_length(ids: list[np.ndarray]) -> int:
    """Leading positions where the sequences route alike (the shared chat template): at each position, per
    layer, the share of sequences whose top-6 set is that layer's most common one, averaged over layers; the
    template ends at the first position where it falls below TEMPLATE_AGREEMENT."""
    if len(ids) < 2:
        return 0
    n = min(len(x) for x in ids)
    for pos in range(n):
        agree = []
        for layer in range(ids[0].shape[1]):
            sets = np.sort(np.stack([x[pos, layer] for x in ids]), axis=1)
            _, counts = np.unique(sets, axis=0, return_counts=True)
            agree.append(counts.max() / len(ids))
        if np.mean(agree) < TEMPLATE_AGREEMENT:
            return pos
    return n


def phases(length: int, template: int) -> np.ndarray:
    """Prefill for the template and the first half of the rest; decode for the second half."""
    rest = max(0, length - template)
    split = template + (rest - rest // 2)
    return np.where(np.arange(length) < split, PREFILL, DECODE).astype(np.uint8)


def build(read, domains=DOMAINS) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The trace's arrays and per-domain facts from the files ``read`` returns."""
    cols: dict[str, list[np.ndarray]] = {"expert_ids": [], "weights": [], "sequence": [], "position": [],
                                         "phase": []}
    facts, seq = {}, 0
    for domain in domains:
        ids, weights = read_domain(read, domain)
        template = template_length(ids)
        for x, w in zip(ids, weights, strict=True):
            n = len(x)
            cols["expert_ids"].append(x.astype(np.uint8))
            cols["weights"].append(w.astype(np.float16))
            cols["sequence"].append(np.full(n, seq, np.uint32))
            cols["position"].append(np.arange(n, dtype=np.uint32))
            cols["phase"].append(phases(n, template))
            seq += 1
        facts[domain] = {"sequences": len(ids), "tokens": int(sum(len(x) for x in ids)),
                         "template_tokens": template}
    return {k: np.concatenate(v) for k, v in cols.items()}, facts


def meta_for(facts: dict[str, Any], commit: str, config_hash: str | None) -> dict[str, Any]:
    return {
        "model_id": MODEL_ID, "num_experts": NUM_EXPERTS, "top_k": TOP_K, "synthetic": False,
        **({"config_hash": config_hash} if config_hash else {}),
        "provenance": {
            "kind": "real routing, imported",
            "source": f"{REPOSITORY} results/expert_scores/{{{','.join(DOMAINS)}}}/expert_weights_{{1..26}}.txt",
            "repository": REPOSITORY, "commit": commit, "licence": "MIT (LICENSE-CODE)",
            "paper": "Wang et al., Let the Expert Stick to His Last: Expert-Specialized Fine-Tuning for Sparse "
                     "Architectural Large Language Models, arXiv 2407.01906",
            "checkpoint": "deepseek-ai/ESFT-vanilla-lite (README, scripts: the DeepSeek-V2-Lite shape, 64 routed "
                          "experts, top-6, 26 MoE layers)",
            "domains": facts,
            "importer": "capsim.traces.import_esft",
            "caveats": [
                "teacher-forced: one forward pass per sample, no generation; a token's routing depends only on "
                "its causal prefix, so it is the routing that token gets in prefill or decode",
                "the prompt/response boundary is not logged: the second half of each sequence's non-template "
                "tokens are marked decode, the rest prefill",
                "the chat template's tokens (the leading positions where, averaged over layers, at least "
                f"{TEMPLATE_AGREEMENT} of a domain's sequences share the top-6 set) are prompt tokens and never "
                "decode tokens",
                "four fine-tuning domains (intent, law, summary, translation), 213 samples: a narrow mix; "
                "chat or code traffic may route differently",
                "the checkpoint is ESFT-vanilla-lite, not the released DeepSeek-V2-Lite weights; same shape",
            ],
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Import deepseek-ai/ESFT routing logs as a capsim trace.")
    ap.add_argument("--repo", required=True, help="git directory of a deepseek-ai/ESFT snapshot")
    ap.add_argument("--out", required=True, help="trace folder to write")
    a = ap.parse_args(argv)

    def read(path: str) -> str:
        return subprocess.run(["git", "-C", a.repo, "show", f"HEAD:{path}"], check=True, capture_output=True,
                              text=True).stdout

    commit = subprocess.run(["git", "-C", a.repo, "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    from capsim.model.catalogue import load_spec

    _, info = load_spec(MODEL_ID)
    arrays, facts = build(read)
    write_trace(a.out, arrays, meta_for(facts, commit, info.get("config_hash")))
    print(f"wrote {a.out}: {len(arrays['sequence']):,} tokens, {facts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
