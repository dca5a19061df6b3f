"""Measure a real Hugging Face MoE model with torch (``capsim measure``): the ground truth predictions are checked against.

Needs torch and transformers (``pip install capsim[trace]``), imported inside :func:`measure`. The run file
it writes (format, reading, writing) is :mod:`capsim.measure.run_file`, torch-free; the shape scaling is
:mod:`capsim.measure.scaling`; the host facts it records, :mod:`capsim.measure.host_load`.

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

Shapes can be scaled down (:func:`capsim.measure.scaling.scale_config`) to fit the machine; the run file
holds the full config that was run, and the prediction is made for that same shape.
"""

from __future__ import annotations

import copy
import datetime as _dt
import gc
import json
import platform
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from capsim import outputs
from capsim.errors import CapsimError
from capsim.measure.host_load import _cpu_name, _cpu_ticks, _host_load
from capsim.measure.run_file import (
    DTYPES,
    ENGINE,
    RUN_FORMAT,
    RUN_VERSION,
    _activated,
    _full_config,
    _stats,
    write_run,
)
from capsim.measure.scaling import scale_config
from capsim.traces import format as tfmt


def _int_list(name: str, values: Iterable[int] | int) -> list[int]:
    values = [values] if isinstance(values, int) else list(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise CapsimError(f"{name}: expected positive integers, got {values!r}")
    return values


def measure(config_or_path: str | Path, *, random_init: bool = True, prompt_lens: Iterable[int] = (128, 1024),
            batches: Iterable[int] = (1, 4, 16, 64), context: Iterable[int] | int = (128,), repeats: int = 5,
            warmup: int = 2, dtype: str = "float32", seed: int = 0, threads: int | None = None,
            out: str | Path | None = None, scale: dict[str, int | None] | None = None, device: str = "cpu",
            decode_batches: Iterable[int] | None = None, max_prefill_tokens: int | None = None,
            cache_sequences: int = 4, notes: str | None = None, command: list[str] | None = None,
            progress: Callable[[str], None] | None = None,
            on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Measure prefill latency per (batch, prompt length) and decode step time per (batch, context); return the
    run dict (written atomically to ``out`` when given).

    ``config_or_path``: a config.json file or a model folder (config.json + weights unless ``random_init``).
    ``scale``: :func:`scale_config` keyword arguments (random initialisation only). ``max_prefill_tokens``:
    prefill points with more than this many tokens (batch x prompt length) are skipped and listed in the
    notes. ``decode_batches`` defaults to ``batches``. ``progress(line)``: a line per step and measured case;
    ``on_progress(done, total)``: the (batch, length) cases measured out of all, before the first and after each.
    """
    from capsim.traces.hf_model import (
        _require_ml,
        check_weights,
        family_of,
        load_hf_model,
        model_id_of,
        read_config,
    )
    from capsim.traces.routers import routing_rule

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
        raise CapsimError(f"--warmup: expected an integer >= 0, got {warmup!r}")
    if dtype not in DTYPES:
        raise CapsimError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if threads is not None:
        _int_list("threads", threads)
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise CapsimError(f"--device {device!r}: expected cpu or cuda")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise CapsimError("device cuda: torch sees no CUDA device")
    if out is not None:
        outputs.check_output(out, "run", "--out")  # before minutes of measuring
    scale = {k: v for k, v in (scale or {}).items() if v is not None}

    raw, folder = read_config(config_or_path)
    family_of(raw)  # CapsimError now for a non-MoE / unsupported family
    if not random_init:
        check_weights(config_or_path, folder)  # a truncated checkpoint: one line, before loading
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
    cases = len(contexts) * len(decode_batches) + sum(
        1 for length in prompt_lens for b in batches if not (max_prefill_tokens and b * length > max_prefill_tokens))

    def count() -> None:
        if on_progress is not None:
            on_progress(len(measurements), cases)

    count()
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
                    count()
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
                    count()
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
