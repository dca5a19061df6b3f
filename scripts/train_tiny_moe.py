"""Train a tiny OLMoE-shaped MoE on the Python standard library sources, on CPU, for a few minutes.

Purpose: a checkpoint whose expert routing is *learned* (not random-init near-uniform), so that a
trace collected from it (traces/) carries real routing skew. See traces/models/tiny-olmoe-stdlib/README.md.

Run:  python scripts/train_tiny_moe.py --minutes 6 [--seed 0] [--out traces/models/tiny-olmoe-stdlib]

- Corpus: every ``*.py`` under ``sysconfig.get_paths()["stdlib"]`` of the running interpreter, sorted,
  excluding test suites, idlelib and site-packages. Every ``--val-every``-th file (sorted order) is held
  out for validation (split by file, not by offset).
- Tokeniser: raw bytes. token id = byte value (vocab 256); no tokenizer files. This equals the trace
  collector's byte-level fallback (token id = byte value mod vocab_size).
- Model: ``transformers.OlmoeForCausalLM`` (16 experts, top-2, no shared expert), trained in fp32 with
  the OLMoE load-balancing auxiliary loss (``output_router_logits=True``, ``router_aux_loss_coef``).
- Output: ``config.json`` + ``model.safetensors`` (float16, via ``save_pretrained``), ``training_log.json``
  and ``README.md``. Files are written atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import random
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
UNIFORM_NATS = math.log(256)
EXCLUDED_DIRS = {"test", "tests", "idle_test", "idlelib", "site-packages", "dist-packages", "__pycache__"}


# --------------------------------------------------------------------------------------------- corpus
def stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    files = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if any(part in EXCLUDED_DIRS for part in rel.parts[:-1]):
            continue
        if p.is_file():
            files.append(p)
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    return root, files


def load_corpus(val_every: int) -> tuple[np.ndarray, np.ndarray, dict]:
    root, files = stdlib_files()
    sha = hashlib.sha256()
    train_parts, val_parts = [], []
    n_train = n_val = 0
    for i, p in enumerate(files):
        data = p.read_bytes() + b"\n"  # one newline separates files in the byte stream
        sha.update(data)
        if val_every > 0 and i % val_every == val_every - 1:
            val_parts.append(data)
            n_val += 1
        else:
            train_parts.append(data)
            n_train += 1
    train = np.frombuffer(b"".join(train_parts), dtype=np.uint8)
    val = np.frombuffer(b"".join(val_parts), dtype=np.uint8)
    facts = {
        "source": "Python standard library *.py sources of the interpreter that ran the script",
        "stdlib_path": str(root),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "excluded_directories": sorted(EXCLUDED_DIRS),
        "file_order": "sorted by path relative to stdlib; each file followed by one b'\\n'",
        "n_files": len(files),
        "total_bytes": int(train.size + val.size),
        "sha256_concatenated": sha.hexdigest(),
        "validation_split": f"by file: every {val_every}th file in sorted order (index % {val_every} == {val_every - 1})",
        "n_train_files": n_train,
        "n_val_files": n_val,
        "train_bytes": int(train.size),
        "val_bytes": int(val.size),
    }
    return train, val, facts


def sample_batch(data: np.ndarray, batch: int, seq: int, gen: np.random.Generator) -> torch.Tensor:
    starts = gen.integers(0, data.size - seq, size=batch)
    rows = np.stack([data[s : s + seq] for s in starts]).astype(np.int64)
    return torch.from_numpy(rows)


# --------------------------------------------------------------------------------------------- model
def make_config(args):
    from transformers import OlmoeConfig

    return OlmoeConfig(
        vocab_size=256,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        intermediate_size=args.expert_ffn,
        num_experts=args.experts,
        num_experts_per_tok=args.top_k,
        max_position_embeddings=512,
        router_aux_loss_coef=args.aux_coef,
        output_router_logits=True,
        norm_topk_prob=False,  # OLMoE-1B-7B default
        tie_word_embeddings=False,
        use_cache=True,  # saved config: KV cache on for generation; training/eval pass use_cache=False
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )


def lr_at(step: int, frac_done: float, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    # cosine from lr to lr*min_lr_ratio over the budget (wall-clock or step cap, whichever is further along)
    frac = min(1.0, max(0.0, frac_done))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


@torch.no_grad()
def evaluate(model, batches: list[torch.Tensor]) -> float:
    model.eval()
    tot, n = 0.0, 0
    for x in batches:
        out = model(input_ids=x, labels=x, output_router_logits=False, use_cache=False)
        tokens = x.numel() - x.shape[0]  # labels are shifted inside the loss
        tot += float(out.loss) * tokens
        n += tokens
    model.train()
    return tot / n


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


# --------------------------------------------------------------------------------------------- output
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


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=6.0, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=int, default=100_000, help="step cap")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="traces/models/tiny-olmoe-stdlib")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--expert-ffn", type=int, default=128)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--aux-coef", type=float, default=0.01)
    ap.add_argument(
        "--experts-impl", default="grouped_mm", help="transformers experts_implementation for training"
    )
    ap.add_argument("--val-every", type=int, default=20, help="hold out every Nth file")
    ap.add_argument("--val-seqs", type=int, default=64)
    ap.add_argument("--route-seqs", type=int, default=64)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--evals", type=int, default=6, help="validation evaluations spread over the budget")
    args = ap.parse_args(argv)

    import transformers
    from transformers import OlmoeForCausalLM

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    transformers.set_seed(args.seed)

    out = Path(args.out)
    if not out.is_absolute():
        out = ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    train, val, corpus = load_corpus(args.val_every)
    print(
        f"corpus: Python {corpus['python_version']} stdlib, {corpus['n_files']} files, {corpus['total_bytes']:,} bytes "
        f"(train {corpus['train_bytes']:,} / val {corpus['val_bytes']:,}), sha256 {corpus['sha256_concatenated'][:16]}",
        flush=True,
    )

    # fixed evaluation data (own generators so they do not depend on the training stream)
    eval_gen = np.random.default_rng(args.seed + 1)
    val_batches = [
        sample_batch(val, args.batch, args.seq, eval_gen)
        for _ in range(math.ceil(args.val_seqs / args.batch))
    ]
    route_gen = np.random.default_rng(args.seed + 2)
    route_batches = [
        sample_batch(val, args.batch, args.seq, route_gen)
        for _ in range(math.ceil(args.route_seqs / args.batch))
    ]
    train_gen = np.random.default_rng(args.seed)

    config = make_config(args)
    torch.manual_seed(args.seed)
    model = OlmoeForCausalLM._from_config(config, experts_implementation=args.experts_impl)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    per_expert = 3 * args.hidden * args.expert_ffn
    n_active = n_params - args.layers * (args.experts - args.top_k) * per_expert
    print(
        f"model: {n_params:,} params ({n_active:,} active/token), experts impl {args.experts_impl}",
        flush=True,
    )

    route_init = routing_stats(model, route_batches, args.top_k, args.experts)
    val_init = evaluate(model, val_batches)
    print(f"init: val {val_init:.4f} nats/byte (uniform {UNIFORM_NATS:.4f})", flush=True)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )

    budget_s = args.minutes * 60
    eval_points = {round(budget_s * (i + 1) / args.evals, 3) for i in range(args.evals - 1)}
    next_evals = sorted(eval_points)
    curve, val_curve = [], [{"step": 0, "elapsed_s": 0.0, "val_loss_nats": round(val_init, 5)}]
    win_lm, win_aux, win_tot = [], [], []
    step = 0
    t0 = time.perf_counter()
    stop_reason = "step cap"
    while step < args.max_steps:
        elapsed = time.perf_counter() - t0
        if elapsed >= budget_s:
            stop_reason = "wall-clock budget"
            break
        frac = max(elapsed / budget_s, step / args.max_steps)
        lr = lr_at(step, frac, args)
        for g in opt.param_groups:
            g["lr"] = lr
        x = sample_batch(train, args.batch, args.seq, train_gen)
        outp = model(input_ids=x, labels=x, output_router_logits=True, use_cache=False)
        loss = outp.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        step += 1
        aux = float(outp.aux_loss.detach())
        tot = float(loss.detach())
        win_tot.append(tot)
        win_aux.append(aux)
        win_lm.append(tot - args.aux_coef * aux)
        if step % args.log_every == 0 or step == 1:
            elapsed = time.perf_counter() - t0
            rec = {
                "step": step,
                "elapsed_s": round(elapsed, 2),
                "lr": round(lr, 6),
                "train_lm_loss_nats": round(float(np.mean(win_lm)), 5),
                "train_aux_loss": round(float(np.mean(win_aux)), 5),
                "train_total_loss": round(float(np.mean(win_tot)), 5),
            }
            curve.append(rec)
            print(
                f"step {step:5d}  {elapsed:7.1f}s  lr {lr:.2e}  lm {rec['train_lm_loss_nats']:.4f}  "
                f"aux {rec['train_aux_loss']:.4f}",
                flush=True,
            )
            win_lm, win_aux, win_tot = [], [], []
        if next_evals and time.perf_counter() - t0 >= next_evals[0]:
            next_evals.pop(0)
            v = evaluate(model, val_batches)
            val_curve.append(
                {"step": step, "elapsed_s": round(time.perf_counter() - t0, 2), "val_loss_nats": round(v, 5)}
            )
            print(f"          val {v:.4f} nats/byte ({v / math.log(2):.3f} bits/byte)", flush=True)
    wall = time.perf_counter() - t0
    if win_lm:  # flush the partial window
        curve.append(
            {
                "step": step,
                "elapsed_s": round(wall, 2),
                "lr": round(lr, 6),
                "train_lm_loss_nats": round(float(np.mean(win_lm)), 5),
                "train_aux_loss": round(float(np.mean(win_aux)), 5),
                "train_total_loss": round(float(np.mean(win_tot)), 5),
            }
        )
    final_val = evaluate(model, val_batches)
    val_curve.append(
        {"step": step, "elapsed_s": round(time.perf_counter() - t0, 2), "val_loss_nats": round(final_val, 5)}
    )
    final_train = curve[-1]["train_lm_loss_nats"]
    print(
        f"stop ({stop_reason}) after {step} steps, {wall:.1f}s: train {final_train:.4f}  val {final_val:.4f}",
        flush=True,
    )

    route_trained = routing_stats(model, route_batches, args.top_k, args.experts)

    # save float16 checkpoint, reload it (fp32 compute) and check loss + routing agreement
    names = save_checkpoint(model, out, torch.float16)
    reloaded = OlmoeForCausalLM.from_pretrained(
        out, dtype=torch.float32, experts_implementation=args.experts_impl
    )
    reloaded_val = evaluate(reloaded, val_batches)
    agree = n = 0
    with torch.no_grad():
        model.eval()
        reloaded.eval()
        for xb in route_batches:
            a = model(input_ids=xb, output_router_logits=True, use_cache=False).router_logits
            b = reloaded(input_ids=xb, output_router_logits=True, use_cache=False).router_logits
            for la, lb in zip(a, b, strict=True):
                ia = torch.topk(la.float(), args.top_k, dim=-1).indices.sort(dim=-1).values
                ib = torch.topk(lb.float(), args.top_k, dim=-1).indices.sort(dim=-1).values
                agree += int((ia == ib).all(dim=-1).sum())
                n += ia.shape[0]
    ckpt_bytes = (out / "model.safetensors").stat().st_size

    def per_layer(stats: dict, key: str) -> list[float]:
        return [layer[key] for layer in stats["layers"]]

    mm_init, mm_tr = per_layer(route_init, "max_over_mean"), per_layer(route_trained, "max_over_mean")
    mi_init = per_layer(route_init, "mutual_information_byte_expert_bits")
    mi_tr = per_layer(route_trained, "mutual_information_byte_expert_bits")
    pm_init = per_layer(route_init, "mean_topk_router_prob_mass")
    pm_tr = per_layer(route_trained, "mean_topk_router_prob_mass")
    summary = (
        f"Expert load max/mean per layer: init {mm_init}, trained {mm_tr}. "
        f"MI(byte; expert) bits per layer: init {mi_init}, trained {mi_tr}. "
        f"Mean top-{args.top_k} router probability mass per layer (uniform router = {args.top_k / args.experts:.3f}): "
        f"init {pm_init}, trained {pm_tr}. "
    )
    if float(np.mean(mm_tr)) > float(np.mean(mm_init)) * 1.1:
        summary += "Aggregate expert load is more skewed after training than at initialisation. "
    elif float(np.mean(mm_tr)) < float(np.mean(mm_init)) / 1.1:
        summary += "Aggregate expert load is LESS skewed after training than at initialisation. "
    else:
        summary += "Aggregate expert load skew is about the same after training as at initialisation. "
    summary += (
        "Note: at initialisation the load is already uneven on this corpus, because the random router is a "
        "near-deterministic function of the current byte in the early layers and byte frequencies in Python "
        "source are very skewed (spaces, letters, newlines). The router's confidence is what separates random "
        f"from learned routing here: mean top-{args.top_k} probability mass {np.mean(pm_init):.3f} at init vs "
        f"{np.mean(pm_tr):.3f} trained ({args.top_k / args.experts:.3f} = indifferent router)."
    )

    cmd_args = list(argv if argv is not None else sys.argv[1:])
    log = {
        "what": "tiny OLMoE-shaped MoE trained on CPU on Python stdlib sources (byte-level) for learned routing traces",
        "command": "python scripts/train_tiny_moe.py " + " ".join(cmd_args),
        "args": vars(args),
        "date_utc": date,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
        "corpus": corpus,
        "tokenizer": "bytes: token id = byte value, vocab_size 256, no tokenizer files "
        "(identical to the trace collector's byte fallback: byte value mod vocab_size)",
        "model": {
            "class": "transformers.OlmoeForCausalLM",
            "config": json.loads(config.to_json_string()),
            "n_params": n_params,
            "n_params_active_per_token": n_active,
            "checkpoint_dtype": "float16",
            "checkpoint_files": names,
            "checkpoint_bytes": ckpt_bytes,
        },
        "steps": step,
        "stop_reason": stop_reason,
        "wall_time_s": round(wall, 2),
        "tokens_seen": step * args.batch * args.seq,
        "loss_curve": curve,
        "val_curve": val_curve,
        "results": {
            "uniform_predictor_nats": round(UNIFORM_NATS, 5),
            "val_loss_init_nats": round(val_init, 5),
            "final_train_lm_loss_nats": round(final_train, 5),
            "final_train_lm_loss_bits": round(final_train / math.log(2), 5),
            "final_train_aux_loss": curve[-1]["train_aux_loss"],
            "final_val_loss_nats": round(final_val, 5),
            "final_val_loss_bits": round(final_val / math.log(2), 5),
            "val_eval_tokens": int(sum(x.numel() for x in val_batches)),
            "reloaded_val_loss_nats": round(reloaded_val, 5),
            "topk_set_agreement_fp16": round(agree / n, 5),
        },
        "routing": {
            "method": "router logits from the model (output_router_logits=True), softmax, top-k per token; "
            "share of all top-k assignments per expert on fixed validation sequences",
            "init": route_init,
            "trained": route_trained,
            "summary": summary,
        },
    }
    atomic_write_text(out / "training_log.json", json.dumps(log, indent=1) + "\n")
    atomic_write_text(out / "README.md", render_readme(log))
    print(summary, flush=True)
    print(f"wrote {out} ({ckpt_bytes / 1e6:.2f} MB checkpoint)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
