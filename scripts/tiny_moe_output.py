"""What scripts/train_tiny_moe.py writes into the model folder: the checkpoint (float16 safetensors), files
written atomically, and the README.md rendered from the training log (what the model is, how it was trained,
its loss against the byte-uniform baseline and its learned routing)."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

UNIFORM_NATS = math.log(256)  # cross-entropy of a uniform guess over the 256 byte values (nats per token)


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(model, out: Path, dtype: torch.dtype) -> list[str]:
    """save_pretrained into a temp dir next to ``out``, then os.replace each file into ``out``."""
    import copy

    half = copy.deepcopy(model).to(dtype)
    tmpdir = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp."))
    try:
        half.save_pretrained(tmpdir, safe_serialization=True)
        names = sorted(p.name for p in tmpdir.iterdir() if p.is_file())
        for name in names:
            os.chmod(tmpdir / name, 0o644)
            os.replace(tmpdir / name, out / name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return names


def render_readme(log: dict) -> str:
    c = log["corpus"]
    r = log["results"]
    m = log["model"]
    rt, ri = log["routing"]["trained"], log["routing"]["init"]
    rows = "\n".join(
        f"| {a['layer']} | {b['max_over_mean']:.2f} | {a['max_over_mean']:.2f} | {b['min_over_mean']:.2f} "
        f"| {a['min_over_mean']:.2f} | {b['entropy_bits']:.3f} | {a['entropy_bits']:.3f} "
        f"| {b['mutual_information_byte_expert_bits']:.3f} | {a['mutual_information_byte_expert_bits']:.3f} "
        f"| {b['mean_topk_router_prob_mass']:.3f} | {a['mean_topk_router_prob_mass']:.3f} |"
        for a, b in zip(rt["layers"], ri["layers"], strict=True)
    )
    return f"""# tiny-olmoe-stdlib

A tiny OLMoE-shaped Mixture-of-Experts language model (`transformers.OlmoeForCausalLM`) trained from
scratch for {log["wall_time_s"] / 60:.1f} minutes on {log["machine"]["cpu_count"]} CPU cores, on the Python
standard library sources, so that a trace collected from it has **learned** expert routing rather than the
arbitrary, low-confidence routing of random weights. It is a routing-statistics artefact, not a useful language model.

Made by (from the repository root):

```
{log["command"]}
```

Files: `config.json` and `model.safetensors` (float16, written by `save_pretrained`), `training_log.json`
(arguments, corpus facts, library versions, machine, loss curve, routing check), this README.
The training script is `scripts/train_tiny_moe.py`.

## Tokeniser (byte level, no files)

There is no tokenizer file. Text is encoded as its raw bytes (UTF-8 for text) and **token id = byte
value**, vocab_size 256. This is the trace collector's byte-level fallback (token id = byte value mod
vocab_size), which is the identity here. To decode, `bytes(ids)`.

## Model

{m["n_params"]:,} parameters ({m["n_params_active_per_token"]:,} active per token): vocab 256,
hidden {m["config"]["hidden_size"]}, {m["config"]["num_hidden_layers"]} layers, {m["config"]["num_attention_heads"]}
heads, {m["config"]["num_experts"]} experts per layer of intermediate size {m["config"]["intermediate_size"]},
top-{m["config"]["num_experts_per_tok"]} routing (softmax then top-k, `norm_topk_prob=false`, as OLMoE-1B-7B),
no shared expert, untied embeddings, load-balancing auxiliary loss coefficient {m["config"]["router_aux_loss_coef"]}.

## Corpus

Python {c["python_version"]} standard library (`{c["stdlib_path"]}`), all `*.py` files sorted by path, excluding
the directories {", ".join("`" + d + "`" for d in c["excluded_directories"])}: {c["n_files"]} files,
{c["total_bytes"]:,} bytes, sha256 of the concatenation `{c["sha256_concatenated"]}`.
Validation split by file ({c["validation_split"]}): {c["n_val_files"]} files, {c["val_bytes"]:,} bytes.
A different Python version gives a different corpus; the sha256 identifies it.

## Results

{log["steps"]} optimizer steps of {log["args"]["batch"]} x {log["args"]["seq"]} bytes in {log["wall_time_s"]:.0f} s
(AdamW, peak lr {log["args"]["lr"]}, warm-up {log["args"]["warmup"]} steps, cosine decay over the wall-clock budget).

| | nats/byte | bits/byte |
|---|---|---|
| uniform predictor | {UNIFORM_NATS:.3f} | 8.000 |
| validation at init | {r["val_loss_init_nats"]:.3f} | {r["val_loss_init_nats"] / math.log(2):.3f} |
| train (final, last-{log["args"]["log_every"]}-step mean, LM part) | {r["final_train_lm_loss_nats"]:.3f} | {r["final_train_lm_loss_bits"]:.3f} |
| validation (final, fp32) | {r["final_val_loss_nats"]:.3f} | {r["final_val_loss_bits"]:.3f} |
| validation (saved float16 checkpoint reloaded, fp32 compute) | {r["reloaded_val_loss_nats"]:.3f} | {r["reloaded_val_loss_nats"] / math.log(2):.3f} |

## Routing check (learned vs. initialisation)

On {rt["n_tokens"]:,} validation tokens ({log["args"]["route_seqs"]} sequences x {log["args"]["seq"]} bytes), per MoE layer:
share of top-{rt["top_k"]} assignments per expert, reported as max/mean and min/mean (1.0 = perfectly even) and
as the entropy of the load distribution (bits, maximum {rt["layers"][0]["entropy_max_bits"]:.0f}); the mutual
information between the input byte and the chosen experts (bits; 0 = routing ignores the token); and the mean
probability mass the router puts on its top-{rt["top_k"]} experts ({rt["top_k"]}/{len(rt["layers"][0]["expert_share"])} = an
indifferent router). "init" is the same model before training (same seed, same sequences).

| layer | max/mean init | max/mean trained | min/mean init | min/mean trained | load entropy init | load entropy trained | MI(byte; expert) init | MI trained | top-k mass init | top-k mass trained |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}

Top-k agreement between the fp32 model and the reloaded float16 checkpoint: {r["topk_set_agreement_fp16"]:.4f}
of (token, layer) top-{rt["top_k"]} sets identical.

{log["routing"]["summary"]}
"""
