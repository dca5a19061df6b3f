"""Measure a real Hugging Face MoE model with torch (``capsim measure``): the ground truth predictions are checked against.

Needs torch and transformers (``pip install capsim[trace]``); they are imported inside the functions that use
them, and the prediction path never imports this module's torch parts.

What is measured (engine ``hf-eager``: the transformers modelling code, eager PyTorch, SDPA attention)
    prefill  one forward over B sequences of I tokens (random token ids, seeded; no padding; ``use_cache=True``,
             ``logits_to_keep=1`` as ``generate`` calls it: the LM head runs on the last token only).
    decode   one forward of B new tokens (one per sequence) with a KV cache holding C tokens per sequence.
             The cache comes from a real prefill of ``min(B, cache_sequences)`` distinct random sequences of C
             tokens, tiled over the batch (the attention cost does not depend on the cached values, and a
             prefill of 64 x 1024 distinct tokens per point would dominate a CPU campaign). After every step
             the token it appended is cropped from the cache (untimed), so every timed step attends to exactly
             C cached tokens plus itself, and pays the cache append (``torch.cat``) a real decode step pays.

Every point runs ``warmup`` untimed forwards, then ``repeats`` timed ones (``time.perf_counter``; on CUDA
synchronised before and after) under ``torch.inference_mode()`` at a fixed ``torch.set_num_threads``; the run
file keeps all samples, the median and the 10th / 90th percentiles. All repeats of a point use the same
inputs, so they route identically; the routing is recorded with the router hooks of
:class:`capsim.traces.collect.RoutingRecorder` on the first warm-up forward (untimed: the hooks copy the expert
ids to the host; with ``warmup=0`` it is one extra untimed forward): per MoE layer, the number of
distinct experts the batch's tokens were sent to.

Shapes can be scaled down (:func:`scale_config`) to fit the machine; the run file holds the full config that
was run, and the prediction is made for that same shape.
"""

from __future__ import annotations

import copy
import datetime as _dt
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from capsim.errors import CapsimError
from capsim.model.spec import _SYNONYMS
from capsim.traces import format as tfmt

RUN_FORMAT = "capsim-run"
RUN_VERSION = 1
ENGINE = "hf-eager"
DTYPES = ("float32", "bfloat16")
MEASUREMENT_KEYS = ("phase", "batch", "median_s", "p10_s", "p90_s", "repeats", "samples_s",
                    "activated_experts_per_layer", "activated_by_layer")
# Config keys that describe the software that wrote a config, not the architecture: left out of the run
# file's config so its hash is the same across transformers versions and dtypes.
_NOT_ARCHITECTURE = ("transformers_version", "dtype", "torch_dtype", "_name_or_path", "architectures", "auto_map")

# ---------------------------------------------------------------------------------------------------
# Shape scaling


def _scopes(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Where a family keeps its shapes: Llama-4's text_config first, the top level, DBRX's sub-configs."""
    out = [cfg["text_config"]] if isinstance(cfg.get("text_config"), dict) else []
    out.append(cfg)
    out += [cfg[k] for k in ("ffn_config", "attn_config") if isinstance(cfg.get(k), dict)]
    return out


def _slot(cfg: dict[str, Any], keys: Iterable[str]) -> tuple[dict[str, Any], str] | None:
    """(sub-dict, key) of the first of ``keys`` set (not None) in the config, looking in every scope."""
    for scope in _scopes(cfg):
        for k in keys:
            if scope.get(k) is not None:
                return scope, k
    return None


def _need(cfg: dict[str, Any], name: str, keys: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    slot = _slot(cfg, keys)
    if slot is None:
        raise CapsimError(f"config.json: cannot scale {name}: none of {'/'.join(keys)} is set")
    return slot


def _positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise CapsimError(f"scaling: {name} is {value!r}, expected a positive integer")


def scale_config(cfg: dict[str, Any], layers: int | None = None, hidden: int | None = None,
                 experts: int | None = None, intermediate: int | None = None, heads: int | None = None,
                 vocab: int | None = None) -> dict[str, Any]:
    """A copy of a Hugging Face config.json dict with a smaller (or larger) shape, same family and structure.

    layers        num_hidden_layers / n_layers; per-layer lists (layer_types, no_rope_layers) are cut to
                  length, mlp_only_layers filtered, and first_k_dense_replace (DeepSeek) kept below the layer
                  count so at least one MoE layer remains.
    hidden        hidden_size / d_model. The head dimensions are kept: the number of attention heads follows
                  hidden / head_dim (GQA) or the hidden ratio (MLA, whose kv_lora_rank and q_lora_rank scale
                  by the same ratio); key-value heads keep their ratio to the heads. FFN widths do not change
                  (use ``intermediate``).
    experts       routed experts (num_local_experts / num_experts / n_routed_experts / moe_num_experts); top-k
                  is capped at the new count, DeepSeek's n_group reduced to a divisor and topk_group capped.
    intermediate  one routed expert's FFN width (moe_intermediate_size, DBRX ffn_hidden_size, else
                  intermediate_size, which is the expert width in Mixtral, OLMoE, GPT-OSS and Llama-4). Where
                  the config has separate dense or shared widths (DeepSeek and Qwen dense layers'
                  intermediate_size, shared_expert_intermediate_size, Llama-4 intermediate_size_mlp) they
                  are scaled by the same ratio; DeepSeek's shared experts follow n_shared_experts x the width.
    heads         attention heads (key-value heads keep their ratio; MLA: as many key-value heads).
    vocab         vocab_size; bos / eos / pad token ids outside the new vocabulary are dropped.
    """
    for name, v in (("layers", layers), ("hidden", hidden), ("experts", experts), ("intermediate", intermediate),
                    ("heads", heads), ("vocab", vocab)):
        _positive(name, v)
    cfg = copy.deepcopy(cfg)
    mla = _slot(cfg, ("kv_lora_rank",)) is not None

    if layers is not None:
        d, k = _need(cfg, "layers", _SYNONYMS["layers"])
        d[k] = layers
        for scope in _scopes(cfg):
            for key in ("layer_types", "no_rope_layers"):
                if isinstance(scope.get(key), list):
                    scope[key] = scope[key][:layers]
            if isinstance(scope.get("mlp_only_layers"), list):
                scope["mlp_only_layers"] = [i for i in scope["mlp_only_layers"] if i < layers]
            if scope.get("first_k_dense_replace") is not None:
                scope["first_k_dense_replace"] = min(int(scope["first_k_dense_replace"]), max(layers - 1, 0))

    if hidden is not None or heads is not None:
        hd, hk = _need(cfg, "hidden", _SYNONYMS["hidden"])
        nd, nk = _need(cfg, "heads", _SYNONYMS["heads"])
        old_hidden, old_heads = int(hd[hk]), int(nd[nk])
        kv = _slot(cfg, ("num_key_value_heads", "kv_n_heads"))
        old_kv = int(kv[0][kv[1]]) if kv else old_heads
        new_hidden = hidden if hidden is not None else old_hidden
        explicit_head_dim = _slot(cfg, ("head_dim",)) is not None
        if heads is not None:
            new_heads = heads
        elif mla:
            new_heads = max(1, round(old_heads * new_hidden / old_hidden))
        else:
            head_dim = int(_slot(cfg, ("head_dim",))[0]["head_dim"]) if explicit_head_dim else old_hidden // old_heads
            new_heads = max(1, new_hidden // head_dim)
        if not mla and not explicit_head_dim and new_hidden % new_heads:
            raise CapsimError(f"scaling: hidden size {new_hidden} is not divisible by {new_heads} attention heads")
        if mla:
            new_kv = new_heads
        else:
            new_kv = max(1, round(new_heads * old_kv / old_heads))
            new_kv = math.gcd(new_heads, new_kv)  # GQA: the heads must split evenly over the key-value heads
        hd[hk], nd[nk] = new_hidden, new_heads
        if kv:
            kv[0][kv[1]] = new_kv
        if mla and hidden is not None:
            ratio = new_hidden / old_hidden
            for key in ("kv_lora_rank", "q_lora_rank"):
                slot = _slot(cfg, (key,))
                if slot:
                    slot[0][key] = max(1, round(int(slot[0][key]) * ratio))

    if experts is not None:
        d, k = _need(cfg, "experts", _SYNONYMS["num_experts"])
        d[k] = experts
        top = _slot(cfg, _SYNONYMS["top_k"])
        if top:
            top[0][top[1]] = min(int(top[0][top[1]]), experts)
            for key in _SYNONYMS["top_k"]:  # GPT-OSS states top-k twice (num_experts_per_tok, experts_per_token)
                slot = _slot(cfg, (key,))
                if slot:
                    slot[0][key] = min(int(slot[0][key]), experts)
        groups = _slot(cfg, ("n_group",))
        if groups and int(groups[0]["n_group"]) > 1:
            # group-limited routing: groups must split the experts evenly, with >= 2 experts each (DeepSeek-V3
            # ranks a group by its top-2 sum), and the kept groups must hold at least top-k experts
            old_g = int(groups[0]["n_group"])
            g = max([d for d in range(1, old_g + 1) if experts % d == 0 and experts // d >= 2] or [1])
            groups[0]["n_group"] = g
            tg = _slot(cfg, ("topk_group",))
            if tg:
                k = int(top[0][top[1]]) if top else 1
                tg[0]["topk_group"] = min(g, max(min(int(tg[0]["topk_group"]), g), math.ceil(k / (experts // g))))

    if intermediate is not None:
        moe = _slot(cfg, _SYNONYMS["expert_intermediate"])
        if moe:  # separate expert width: dense / shared widths scale by the same ratio
            old = int(moe[0][moe[1]])
            moe[0][moe[1]] = intermediate
            for key in ("intermediate_size", "shared_expert_intermediate_size"):
                slot = _slot(cfg, (key,))
                if slot:
                    slot[0][key] = max(1, round(int(slot[0][key]) * intermediate / old))
        else:
            d, k = _need(cfg, "intermediate", ("intermediate_size",))
            old = int(d[k])
            d[k] = intermediate
            slot = _slot(cfg, ("intermediate_size_mlp",))
            if slot:
                slot[0]["intermediate_size_mlp"] = max(1, round(int(slot[0]["intermediate_size_mlp"]) * intermediate / old))

    if vocab is not None:
        d, k = _need(cfg, "vocab", ("vocab_size",))
        d[k] = vocab
        for scope in _scopes(cfg):
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                v = scope.get(key)
                if isinstance(v, list):
                    kept = [i for i in v if i < vocab]
                    scope[key] = kept or None
                elif isinstance(v, int) and v >= vocab:
                    scope[key] = None
    return cfg


# ---------------------------------------------------------------------------------------------------
# Helpers


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return str(x)


def _stats(samples: list[float]) -> dict[str, Any]:
    a = np.asarray(samples, dtype=float)
    return {"median_s": float(np.median(a)), "p10_s": float(np.percentile(a, 10)),
            "p90_s": float(np.percentile(a, 90)), "repeats": len(samples), "samples_s": [float(s) for s in a]}


def _activated(ids: np.ndarray) -> dict[str, Any]:
    """ids (tokens, moe_layers, top_k) -> distinct experts per MoE layer and their mean."""
    per_layer = [int(np.unique(ids[:, layer, :]).size) for layer in range(ids.shape[1])]
    return {"activated_experts_per_layer": float(np.mean(per_layer)), "activated_by_layer": per_layer}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _full_config(config: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The config the model was built from, as a config.json holds it: the family's defaults filled in (head_dim,
    rope parameters ...), without the generic PretrainedConfig fields left at their defaults (id2label,
    return_dict ...) and without the software fields of _NOT_ARCHITECTURE."""
    import transformers

    base = json.loads(json.dumps(transformers.PretrainedConfig().to_dict(), default=_json_default))
    full = json.loads(json.dumps(config.to_dict(), default=_json_default))
    return {k: v for k, v in full.items()
            if k not in _NOT_ARCHITECTURE and not (k in base and k not in given and v == base[k])}


def _cpu_ticks() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine from /proc/stat (Linux), or None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / hz, sum(fields) / hz


def _host_load(start: tuple[float, float] | None, own_start: float) -> dict[str, Any] | None:
    """How busy the machine was with other work during the run: cores' worth of CPU not used by this process."""
    end = _cpu_ticks()
    if start is None or end is None:
        return None
    busy, total = end[0] - start[0], end[1] - start[1]
    own = time.process_time() - own_start
    cores = os.cpu_count() or 1
    wall = total / cores
    return {"cores": cores, "other_busy_cores": round(max(busy - own, 0.0) / wall, 2) if wall > 0 else None,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()]}


def write_run(path: str | Path, run: dict[str, Any]) -> Path:
    """Write a run file atomically (temporary sibling, then one rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(run, f, indent=1, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_run(path: str | Path) -> dict[str, Any]:
    """A run file, checked for the format and version; CapsimError otherwise."""
    path = Path(path)
    try:
        run = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CapsimError(f"{path}: unreadable run file ({err})") from None
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT or run.get("version") != RUN_VERSION:
        raise CapsimError(f"{path}: not a {RUN_FORMAT} version {RUN_VERSION} file")
    return run


def _int_list(name: str, values: Iterable[int] | int) -> list[int]:
    values = [values] if isinstance(values, int) else list(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise CapsimError(f"{name}: expected positive integers, got {values!r}")
    return values


# ---------------------------------------------------------------------------------------------------
# The measurement


def measure(config_or_path: str | Path, *, random_init: bool = True, prompt_lens: Iterable[int] = (128, 1024),
            batches: Iterable[int] = (1, 4, 16, 64), context: Iterable[int] | int = (128,), repeats: int = 5,
            warmup: int = 2, dtype: str = "float32", seed: int = 0, threads: int | None = None,
            out: str | Path | None = None, scale: dict[str, int | None] | None = None, device: str = "cpu",
            decode_batches: Iterable[int] | None = None, max_prefill_tokens: int | None = None,
            cache_sequences: int = 4, notes: str | None = None, command: list[str] | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure prefill latency per (batch, prompt length) and decode step time per (batch, context); return the
    run dict (written atomically to ``out`` when given).

    ``config_or_path``: a config.json file or a model folder (config.json + weights unless ``random_init``).
    ``scale``: :func:`scale_config` keyword arguments (random initialisation only). ``max_prefill_tokens``:
    prefill points with more than this many tokens (batch x prompt length) are skipped and listed in the
    notes. ``decode_batches`` defaults to ``batches``.
    """
    from capsim.traces.collect import (
        _require_ml,
        family_of,
        load_hf_model,
        model_id_of,
        read_config,
        routing_rule,
    )

    _require_ml()
    import torch
    import transformers

    t_start = time.perf_counter()
    ticks_start, own_start = _cpu_ticks(), time.process_time()
    say = progress or (lambda _msg: None)
    prompt_lens = _int_list("prompt lengths", prompt_lens)
    batches = _int_list("batches", batches)
    decode_batches = batches if decode_batches is None else _int_list("decode batches", decode_batches)
    contexts = _int_list("context", context)
    repeats = _int_list("repeats", repeats)[0]
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise CapsimError(f"warmup: expected an integer >= 0, got {warmup!r}")
    if dtype not in DTYPES:
        raise CapsimError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if threads is not None:
        _int_list("threads", threads)
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise CapsimError(f"device {device!r}: expected cpu or cuda")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise CapsimError("device cuda: torch sees no CUDA device")
    scale = {k: v for k, v in (scale or {}).items() if v is not None}

    raw, folder = read_config(config_or_path)
    family_of(raw)  # CapsimError now for a non-MoE / unsupported family
    model_id = model_id_of(config_or_path, raw)
    used = raw
    if scale:
        if not random_init:
            raise CapsimError("scaling (--layers/--hidden/--experts/--intermediate) needs --random-init: "
                              "a checkpoint's weights have a fixed shape")
        used = scale_config(raw, **scale)

    if threads is not None:
        torch.set_num_threads(threads)
    n_threads = torch.get_num_threads()
    torch_dtype = getattr(torch, dtype)

    with tempfile.TemporaryDirectory(prefix="capsim-measure-") as tmp:
        src: str | Path = config_or_path
        if scale:
            src = Path(tmp) / "config.json"
            src.write_text(json.dumps(used))
        say(f"building {model_id} ({'random init' if random_init else 'checkpoint weights'}, {dtype}, {device})")
        model, _, family = load_hf_model(src, random_init=random_init, seed=seed, device="cpu")
    model.to(dtype=torch_dtype)
    model.to(device)
    model.eval()
    mcfg = model.config
    vocab = int(getattr(mcfg, "vocab_size", None) or getattr(getattr(mcfg, "text_config", None), "vocab_size", 0))
    max_pos = getattr(mcfg, "max_position_embeddings", None) or getattr(
        getattr(mcfg, "text_config", None), "max_position_embeddings", None)
    longest = max(max(prompt_lens), max(contexts) + 1)
    if max_pos and longest > int(max_pos):
        raise CapsimError(f"{longest} tokens exceed the model's max_position_embeddings {max_pos}")
    rule = routing_rule(family, getattr(mcfg, "text_config", None) or mcfg)
    params = int(sum(p.numel() for p in model.parameters()))
    full_config = _full_config(mcfg, used)
    say(f"{model_id}: {params / 1e6:.1f} M parameters, {family}, top-{rule.top_k} of {rule.num_experts} experts, "
        f"{n_threads} threads")

    cuda = str(device).startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def tokens(shape: tuple[int, ...], *key: int) -> Any:
        g = torch.Generator().manual_seed(zlib.crc32(repr((seed, *key)).encode()))
        return torch.randint(0, vocab, shape, generator=g).to(device)

    def route(fn: Callable[[], Any], rows: int) -> dict[str, Any]:
        from capsim.traces.collect import RoutingRecorder

        rec = RoutingRecorder(model, family, rule)
        try:
            fn()
            ids, _ = rec.take(rows)
        finally:
            rec.remove()
        return _activated(ids)

    def timed(fn: Callable[[], Any], rows: int, after: Callable[[], None] | None = None):
        """(samples, routing): the first warm-up forward runs with the router hooks and records the routing
        (an extra untimed forward when warmup is 0); then warmup - 1 more untimed forwards, then the timed ones."""
        routed = route(fn, rows)
        if after is not None:
            after()
        samples = []
        for i in range(max(warmup - 1, 0) + repeats):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            dt = time.perf_counter() - t0
            if after is not None:
                after()
            if i >= max(warmup - 1, 0):
                samples.append(dt)
        return samples, routed

    def show(m: dict[str, Any]) -> None:
        where = f"I={m['input_len']}" if m["phase"] == "prefill" else f"C={m['context']}"
        say(f"  {m['phase']:7s} B={m['batch']:<3d} {where:<7s} median {m['median_s'] * 1e3:9.2f} ms "
            f"(p10 {m['p10_s'] * 1e3:.2f}, p90 {m['p90_s'] * 1e3:.2f}), activated experts "
            f"{m['activated_experts_per_layer']:.1f}/{rule.num_experts}")

    measurements: list[dict[str, Any]] = []
    skipped: list[str] = []
    try:
        with torch.inference_mode():
            for length in prompt_lens:
                for b in batches:
                    if max_prefill_tokens and b * length > max_prefill_tokens:
                        skipped.append(f"prefill batch {b} x {length}")
                        continue
                    ids = tokens((b, length), 0, b, length)

                    def prefill(ids=ids):
                        return model(input_ids=ids, use_cache=True, logits_to_keep=1)

                    samples, routed = timed(prefill, b * length)
                    m = {"phase": "prefill", "batch": b, "input_len": length, **_stats(samples), **routed}
                    measurements.append(m)
                    show(m)
                    del ids
                    gc.collect()
            for ctx in contexts:
                n_seq = min(max(decode_batches), cache_sequences)
                base = model(input_ids=tokens((n_seq, ctx), 1, n_seq, ctx), use_cache=True,
                             logits_to_keep=1).past_key_values
                for b in decode_batches:
                    past = copy.deepcopy(base)
                    past.batch_select_indices(torch.arange(b, device=device) % n_seq)
                    step_ids = tokens((b, 1), 2, b, ctx)
                    position = torch.full((b, 1), ctx, dtype=torch.long, device=device)

                    def step(past=past, step_ids=step_ids, position=position):
                        return model(input_ids=step_ids, position_ids=position, past_key_values=past,
                                     use_cache=True, logits_to_keep=1)

                    def crop(past=past, ctx=ctx):
                        extra = past.get_seq_length() - ctx
                        if extra:
                            past.crop(-extra)

                    samples, routed = timed(step, b, after=crop)
                    if past.get_seq_length() != ctx:
                        raise RuntimeError(f"decode cache holds {past.get_seq_length()} tokens, expected {ctx}")
                    m = {"phase": "decode", "batch": b, "context": ctx, **_stats(samples), **routed}
                    measurements.append(m)
                    show(m)
                    del past
                    gc.collect()
                del base
                gc.collect()
    except torch.OutOfMemoryError as err:
        raise CapsimError(f"out of memory on {device} ({str(err).splitlines()[0]}); measure fewer or smaller "
                          "points (--batches, --prompt-lens, --max-prefill-tokens) or scale the shape down") from None

    notes_all = [notes] if notes else []
    if skipped:
        notes_all.append(f"skipped (more than --max-prefill-tokens {max_prefill_tokens} tokens): "
                         + ", ".join(skipped))
    dev_name = torch.cuda.get_device_name(torch.device(device)) if cuda else _cpu_name()
    run = {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "model": {"id": model_id, "config": full_config, "config_hash": tfmt.config_hash(full_config),
                  "params": params, "source": str(config_or_path), "source_config_hash": tfmt.config_hash(raw),
                  "scaled": scale or None, "random_init": bool(random_init), "family": family,
                  "num_experts": rule.num_experts, "top_k": rule.top_k},
        "device": {"kind": "cuda" if cuda else "cpu", "name": dev_name, "threads": n_threads},
        "engine": ENGINE,
        "dtype": dtype,
        "attn_implementation": getattr(mcfg, "_attn_implementation", None),
        "experts_implementation": getattr(mcfg, "_experts_implementation", None),
        "method": {
            "warmup": warmup, "repeats": repeats, "seed": seed, "timer": "time.perf_counter"
            + (" with torch.cuda.synchronize" if cuda else ""),
            "prefill": "one forward over batch x input_len random tokens, no padding, use_cache=True, "
                       "logits_to_keep=1",
            "decode": f"one forward of batch new tokens with the KV cache at `context` tokens; cache from a prefill "
                      f"of min(batch, {cache_sequences}) distinct random sequences tiled over the batch; the "
                      "appended token is cropped after each step (untimed)",
            "routing": "RoutingRecorder hooks on the first (untimed) warm-up forward, same inputs as the timed ones; "
                       "distinct experts per MoE layer over the batch's tokens",
        },
        "provenance": {
            "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "command": list(command) if command is not None else list(sys.argv),
            "torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "wall_s": round(time.perf_counter() - t_start, 1),
            "host_load": _host_load(ticks_start, own_start),
        },
        "notes": " ".join(notes_all),
        "measurements": measurements,
    }
    if out is not None:
        write_run(out, run)
    return run
