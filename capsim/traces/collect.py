"""Collect expert-activation traces from a Hugging Face MoE model (``capsim trace collect``).

Needs torch and transformers (``pip install capsim[trace]``); they are imported inside the
functions that use them, and the prediction path never imports this module.

What is recorded
    For every token the model processes and every MoE layer: the top-k expert ids and the routing
    weights the experts' outputs are multiplied by, as the router computed them; the sequence (the
    0-based index of the prompt in the prompts file); the 0-based position in that sequence; and the
    phase (prefill or decode). Padding is routed by the model (it is part of the batch) but never
    recorded. Rows are in the order the model processed them: batch by batch, within a forward call
    sequence-major.

How
    A forward hook on every MoE layer's router module (:data:`FAMILIES` names the transformers class
    per family). Where the router's output contains the selected indices (and weights) they are
    recorded as returned; where it returns logits only (DBRX) or scores and logits (Llama-4), the
    family's selection rule is reproduced by the one generic :func:`select_experts`, with the same
    operations in the same dtype, so the result is bit-identical. The tests check, per family, that
    the recorded ids equal the ids the experts were actually run with.

Generation convention (greedy, KV cache, the forward calls ``model.generate(max_new_tokens=N,
do_sample=False)`` makes)
    The prefill forward over the left-padded batch of prompts yields generated token 1. Decode step
    j (1 <= j < N) feeds generated token j, at position len(prompt) + j - 1, and yields token j + 1.
    Token N is never fed back, so each sequence has N - 1 decode rows; a sequence that emits an
    end-of-sequence id stops there (the EOS token is not fed back either).

Inputs
    The model (folder or bare config.json) is loaded by :mod:`capsim.traces.hf_model`; the prompts
    are read and tokenized by :mod:`capsim.traces.prompts` (the folder's tokenizer, else a byte-level
    fallback; prompts cut to ``max_prompt_tokens``).

Resume
    Every finished batch goes to ``<out>.partial/batch_<i>.npz`` (written under a temporary name,
    then renamed), next to ``progress.json`` holding the command's arguments. A rerun with the same
    arguments skips the finished batches; other arguments discard the partial folder. The trace is
    written only at the end (atomically, :func:`capsim.traces.format.write_trace`), so an interrupted
    or failed run leaves the previous ``<out>`` intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from capsim import __version__, atomic, checks
from capsim.checks import MAX_SEQUENCES, MAX_TOKENS
from capsim.errors import CapsimError
from capsim.traces import format as tfmt
from capsim.traces.hf_model import (
    family_of,
    load_hf_model,
    load_tokenizer,
    model_id_of,
    read_config,
    weight_files,
)
from capsim.traces.prompts import read_prompts, tokenize
from capsim.traces.routers import _LWI, FAMILIES, Rule, _first, routing_rule, select_experts

# ---------------------------------------------------------------------------------------------------
# Capture


class RoutingRecorder:
    """Forward hooks on every MoE layer's router; ``take`` returns one forward call's routing."""

    def __init__(self, model, family: str, rule: Rule):
        self.family, self.rule = FAMILIES[family], rule
        slots = []
        for name, mod in model.named_modules():
            if type(mod).__name__ == self.family.router:
                m = re.search(r"\.(\d+)\.", f".{name}.")
                if m is None:
                    raise RuntimeError(f"router {name} is not inside a numbered decoder layer")
                slots.append((int(m.group(1)), name, mod))
        if not slots:
            raise CapsimError(f"no {self.family.router} module in the model: not an MoE model of this family")
        slots.sort(key=lambda s: s[0])
        self.layer_indices = [s[0] for s in slots]
        self.names = [s[1] for s in slots]
        self._calls: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(slots)
        self._handles = [mod.register_forward_hook(self._hook(i)) for i, (_, _, mod) in enumerate(slots)]

    def _hook(self, slot: int):
        def hook(module, args, output):
            if self._calls[slot] is not None:
                raise RuntimeError(f"router {self.names[slot]} called twice in one forward")
            kind = self.family.returns
            if kind == _LWI:
                _, weights, ids = output
            elif kind == "scores,logits":  # dense scores: take the weights the experts are multiplied by
                scores, logits = output
                ids, _ = select_experts(logits, self.rule)
                weights = scores.gather(1, ids)
            else:  # "logits"
                ids, weights = select_experts(output, self.rule, getattr(module, "e_score_correction_bias", None))
            self._calls[slot] = (ids.detach().cpu().numpy().astype(np.int32),
                                 weights.detach().float().cpu().numpy())

        return hook

    def reset(self) -> None:
        self._calls = [None] * len(self._calls)

    def take(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, weights), each (rows, moe_layers, top_k), of the forward call since the last take."""
        missing = [self.names[i] for i, c in enumerate(self._calls) if c is None]
        if missing:
            raise RuntimeError(f"routers not called in this forward: {', '.join(missing)}")
        ids = np.stack([c[0] for c in self._calls], axis=1)
        w = np.stack([c[1] for c in self._calls], axis=1)
        if ids.shape[0] != rows:
            raise RuntimeError(f"router saw {ids.shape[0]} rows, expected {rows}")
        self.reset()
        return ids, w

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


# ---------------------------------------------------------------------------------------------------
# Generation


def _eos_ids(model) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def run_batch(model, recorder: RoutingRecorder, tokens: list[list[int]], seq_ids: list[int], max_new_tokens: int,
              pad_id: int, eos: set[int], device: str = "cpu") -> dict[str, np.ndarray]:
    """Prefill a left-padded batch, then decode greedily with the KV cache; the routing of real tokens."""
    import torch

    b, length = len(tokens), max(len(t) for t in tokens)
    lens = torch.tensor([len(t) for t in tokens])
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    mask = torch.zeros((b, length), dtype=torch.long)
    for i, t in enumerate(tokens):
        input_ids[i, length - len(t):] = torch.tensor(t, dtype=torch.long)
        mask[i, length - len(t):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    seq = np.asarray(seq_ids, dtype=np.int64)
    parts: list[tuple[np.ndarray, ...]] = []
    generated = np.full((b, max_new_tokens), -1, dtype=np.int64)
    finished = np.zeros(b, dtype=bool)
    recorder.reset()
    with torch.inference_mode():
        out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                    use_cache=True, logits_to_keep=1)
        ids, w = recorder.take(b * length)
        keep = mask.numpy().reshape(-1).astype(bool)
        parts.append((ids[keep], w[keep], np.repeat(seq, length)[keep], pos.numpy().reshape(-1)[keep],
                      np.full(int(keep.sum()), tfmt.PREFILL)))
        nxt = out.logits[:, -1, :].argmax(dim=-1).cpu()
        past = out.past_key_values
        for step in range(1, max_new_tokens + 1):
            generated[~finished, step - 1] = nxt.numpy()[~finished]
            finished |= np.isin(nxt.numpy(), list(eos)) if eos else False
            if step == max_new_tokens or finished.all():
                break
            live = ~finished
            feed = torch.where(torch.from_numpy(live), nxt, torch.full_like(nxt, pad_id))
            mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.long)], dim=1)
            p = (lens + step - 1).unsqueeze(1)
            out = model(input_ids=feed.unsqueeze(1).to(device), attention_mask=mask.to(device),
                        position_ids=p.to(device), past_key_values=past, use_cache=True, logits_to_keep=1)
            ids, w = recorder.take(b)
            parts.append((ids[live], w[live], seq[live], p.numpy().reshape(-1)[live],
                          np.full(int(live.sum()), tfmt.DECODE)))
            nxt = out.logits[:, -1, :].argmax(dim=-1).cpu()
            past = out.past_key_values
    names = ("expert_ids", "weights", "sequence", "position", "phase")
    arrays = {n: np.concatenate([p[i] for p in parts]) for i, n in enumerate(names)}
    arrays["generated"] = generated
    return arrays


# ---------------------------------------------------------------------------------------------------
# The collector


@dataclass
class CollectResult:
    path: Path
    meta: dict[str, Any]
    generated: list[list[int]]  # generated token ids per sequence (EOS included when it stopped there)
    computed_batches: list[int] = field(default_factory=list)
    resumed_batches: list[int] = field(default_factory=list)


def _json_safe(x: Any) -> Any:
    """Infinities as strings ("-inf"): meta.json stays strict JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return str(x) if isinstance(x, float) and not np.isfinite(x) else x


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        return None


def _check_out(out: Path) -> None:
    tfmt.check_destination(out)


def collect(model: str | Path, prompts: str | Path, max_new_tokens: int, batch_size: int, out: str | Path, *,
            random_init: bool = False, seed: int = 0, max_prompt_tokens: int = 256, device: str = "cpu",
            stop_at_eos: bool = True, progress: bool = False, command: list[str] | None = None,
            on_model: Callable[[Any], None] | None = None,
            on_batch: Callable[[int], None] | None = None,
            on_progress: Callable[[int, int], None] | None = None) -> CollectResult:
    """Collect a trace; see the module docstring. ``on_model``/``on_batch`` are test hooks (called with
    the loaded model, and with each batch index after that batch is saved). ``on_progress(done, total)``
    is called with the batches done (resumed ones included) out of all, before the first and after each."""
    out = Path(out)
    for name, v, lo, hi in (("--max-new-tokens", max_new_tokens, 1, MAX_TOKENS),
                            ("--batch-size", batch_size, 1, MAX_SEQUENCES),
                            ("--max-prompt-tokens", max_prompt_tokens, 1, MAX_TOKENS), ("--seed", seed, 0, None)):
        checks.integer(v, name, low=lo, high=hi)
    _check_out(out)
    partial = _partial_folder(out)
    with atomic.lock(out, "--out"):  # a second run into the same --out is refused, not interleaved
        return _collect(model, prompts, max_new_tokens, batch_size, out, partial, random_init, seed, max_prompt_tokens,
                        device, stop_at_eos, progress, command, on_model, on_batch, on_progress)


def _partial_folder(out: Path) -> Path:
    """``OUT.partial``, where finished batches wait: new, or capsim's own (it has progress.json)."""
    partial = out.with_name(out.name + ".partial")
    ours = partial.is_dir() and not partial.is_symlink() and (
        (partial / "progress.json").is_file() or not any(partial.iterdir()))
    if (partial.exists() or partial.is_symlink()) and not ours:
        raise CapsimError(f"--out {out}: {partial} exists and is not capsim's unfinished trace; refusing to remove "
                          "it (move it away or choose another --out)")
    return partial


def _collect(model, prompts, max_new_tokens, batch_size, out, partial, random_init, seed, max_prompt_tokens, device,
             stop_at_eos, progress, command, on_model, on_batch, on_progress) -> CollectResult:
    texts = read_prompts(prompts)
    raw, folder = read_config(model)
    family_of(raw)
    args = {
        "model": str(Path(model).resolve()), "config_hash": tfmt.config_hash(raw),
        "weights": None if random_init or folder is None else [
            [p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weight_files(folder)],
        "prompts_sha256": _sha256_file(Path(prompts)), "max_new_tokens": int(max_new_tokens),
        "batch_size": int(batch_size), "random_init": bool(random_init), "seed": int(seed),
        "max_prompt_tokens": int(max_prompt_tokens), "stop_at_eos": bool(stop_at_eos), "device": device,
        "collector_version": __version__,
    }
    m, _, family = load_hf_model(model, random_init, seed, device)
    if on_model is not None:
        on_model(m)
    import torch
    import transformers

    rule = routing_rule(family, m.config)
    tokenizer = load_tokenizer(folder)
    vocab = int(m.config.vocab_size)
    tokens = tokenize(texts, tokenizer, vocab, int(max_prompt_tokens))
    pad = getattr(m.config, "pad_token_id", None)
    pad_id = int(pad) if pad is not None and 0 <= int(pad) < vocab else 0
    eos = _eos_ids(m) if stop_at_eos else set()

    progress_file = partial / "progress.json"
    if partial.exists():
        try:
            same = json.loads(progress_file.read_text()).get("args") == args
        except (OSError, json.JSONDecodeError):
            same = False
        if not same:  # left by a run with other arguments: its batches do not belong to this trace
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    if not progress_file.is_file():
        tmp = progress_file.with_name(".progress.json.tmp")
        tmp.write_text(json.dumps({"args": args}, indent=1) + "\n")
        os.replace(tmp, progress_file)

    n_batches = (len(tokens) + batch_size - 1) // batch_size
    batches: list[dict[str, np.ndarray]] = []
    computed, resumed = [], []
    recorder = RoutingRecorder(m, family, rule)
    bar = None
    if progress:
        import click

        bar = click.progressbar(length=n_batches, label=f"collecting {len(tokens)} prompts in {n_batches} batches",
                                file=sys.stderr, show_pos=True, show_eta=True)
        bar.__enter__()
    if on_progress is not None:
        on_progress(0, n_batches)
    try:
        for i in range(n_batches):
            f = partial / f"batch_{i}.npz"
            arrays = _load_npz(f) if f.is_file() else None
            if arrays is not None:
                resumed.append(i)
            else:
                lo, hi = i * batch_size, min((i + 1) * batch_size, len(tokens))
                arrays = run_batch(m, recorder, tokens[lo:hi], list(range(lo, hi)), int(max_new_tokens), pad_id,
                                   eos, device)
                _save_npz(f, arrays)
                computed.append(i)
                if on_batch is not None:
                    on_batch(i)
            batches.append(arrays)
            if bar is not None:
                bar.update(1)
            if on_progress is not None:
                on_progress(i + 1, n_batches)
    finally:
        recorder.remove()
        if bar is not None:
            bar.__exit__(None, None, None)

    final = {n: np.concatenate([b[n] for b in batches]) for n in tfmt.ARRAYS}
    generated = [[int(t) for t in row if t >= 0] for b in batches for row in b["generated"]]
    prompts_path = Path(prompts)
    meta = {
        "model_id": model_id_of(model, raw),
        "model_type": raw["model_type"],
        "family": family,
        "num_experts": rule.num_experts,
        "top_k": rule.top_k,
        "synthetic": False,
        "config_hash": tfmt.config_hash(raw),
        "moe_layer_indices": recorder.layer_indices,
        "num_layers": int(_first(m.config, ("num_hidden_layers", "n_layers"))),
        "router": {"module": FAMILIES[family].router, "returns": FAMILIES[family].returns,
                   "rule": _json_safe(asdict(rule)), "source": f"transformers {transformers.__version__} "
                                                   f"{FAMILIES[family].source}"},
        "prompt_source": {"path": str(prompts_path), "sha256": args["prompts_sha256"], "prompts": len(texts)},
        "tokenizer": "model folder" if tokenizer is not None else "byte fallback: token id = UTF-8 byte mod vocab_size",
        "max_prompt_tokens": int(max_prompt_tokens),
        "max_new_tokens": int(max_new_tokens),
        "batch_size": int(batch_size),
        "decode_convention": "greedy; prefill yields token 1; decode step j feeds token j (N-1 decode rows per "
                             "sequence, fewer if it emitted EOS)",
        "stop_at_eos": bool(stop_at_eos),
        "eos_token_ids": sorted(eos),
        "generated_tokens": int(sum(len(g) for g in generated)),
        "random_init": bool(random_init),
        "seed": int(seed),
        "dtype": str(m.dtype).replace("torch.", ""),
        "libraries": {"torch": torch.__version__, "transformers": transformers.__version__,
                      "numpy": np.__version__},
        "device": device,
        "command": list(command) if command is not None else list(sys.argv),
    }
    path = tfmt.write_trace(out, final, meta)
    shutil.rmtree(partial, ignore_errors=True)
    return CollectResult(path, tfmt.open_trace(path).meta, generated, computed, resumed)
