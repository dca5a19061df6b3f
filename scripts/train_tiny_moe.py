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
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stdlib_corpus import load_corpus, sample_batch  # noqa: E402
from tiny_moe_output import UNIFORM_NATS, atomic_write_text, render_readme, save_checkpoint  # noqa: E402
from tiny_moe_routing import routing_stats  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


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
