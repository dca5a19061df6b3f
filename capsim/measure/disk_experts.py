"""Routed experts read from a file on disk (``capsim measure-disk``): the measured check of the SSD path.

A real Hugging Face MoE model is built (random weights, as ``capsim measure``); every routed-expert
parameter (transformers 5 keeps each MoE layer's experts stacked: ``gate_up_proj`` (E, 2I, H) and
``down_proj`` (E, H, I)) is written to one file, page-aligned, ``fsync``-ed, and replaced by a tensor of the
same shape and strides over a private memory map of that file (``mmap``, never written). The model then
reads an expert only through page faults on the file.

Decode steps (batch B, C tokens in the KV cache, as ``capsim measure`` times them) are timed in three modes:

    cold     before every step (warm-up and timed) the file leaves the page cache: ``madvise(MADV_DONTNEED)``
             over the mapping (no page of the file stays mapped by this process), then
             ``posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)`` (the kernel drops the file's clean, unmapped
             pages; no root needed). ``mincore(2)`` on the mapping then counts the pages left in the page cache
             (0 = eviction verified). The step's faults read the activated experts, plus the kernel's
             read-around (``read_ahead_kb`` of the block device) around each.
    cold-4k  as cold, with ``madvise(MADV_RANDOM)`` on the mapping: no read-around, one page per fault.
    warm     the whole file is read into the page cache first, and the warm-up steps map the pages: the
             experts come from DRAM (the DRAM tier).

Per step: wall time (``time.perf_counter``), the bytes this process read from the block layer
(``read_bytes`` of ``/proc/self/io``) and the file's pages in the page cache after the step (``mincore``).
The routing (distinct experts per MoE layer and their ids) is recorded with the router hooks on one
untimed forward with the same inputs. On the same file, in passes spread over the run (before the steps,
after each batch, after the steps: the rate of a shared virtual disk drifts), the drive's read rates: one
streaming pass of 16 MiB reads (default readahead) and random reads of 4 KiB .. 8 MiB at aligned random
offsets with ``POSIX_FADV_RANDOM`` (no readahead: one request per read, one at a time), each after evicting
the file; the run keeps every pass and the medians.
"""

from __future__ import annotations

import copy
import datetime as _dt
import gc
import os
import platform
import re
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
from capsim.measure.disk_rates import RATE_PASS_BUDGET_S, MiB, combined_rates, rate_pass
from capsim.measure.host_load import _cpu_name, _cpu_ticks, _host_load
from capsim.measure.page_cache import (
    PAGE,
    MappedFile,
    _libc,
    block_device_of,
    filesystem_of,
    free_page_reporting,
    io_read_bytes,
)
from capsim.measure.run import _int_list
from capsim.measure.run_file import DTYPES, ENGINE, _activated, _full_config, _stats, write_run
from capsim.traces import format as tfmt

RUN_FORMAT = "capsim-disk-run"
RUN_VERSION = 1
MODES = ("cold", "cold-4k", "warm")
RATE_PASSES_BEFORE = 2  # rate passes (streaming + random sizes) before the steps; one after each batch
RATE_PASSES_AFTER = 2
# Each streaming measurement follows an untimed streaming pass over the file, as each timed step follows a
# warm-up step. On a VM whose balloon reports free pages to the host (virtio-balloon REPORTING), memory freed
# seconds ago must be backed by the host again when the page cache reuses it (seen here: a first pass after a
# pause ran at ~0.6 GB/s with ~1.3 s of kernel CPU time and the disk idle most of it, the next one at ~2 GB/s);
# the timed steps, each evicting what the one before read, reuse freshly freed pages, and so does this pass.
NO_CACHE_FS = ("tmpfs", "ramfs", "devtmpfs")  # the page cache is the file's only copy: nothing to evict

# ---------------------------------------------------------------------------------------------------
# The experts file


def expert_tensors(model, num_experts: int) -> list[tuple[str, Any, str]]:
    """(module name, module, parameter name) of every stacked routed-expert parameter, in model order."""
    out = []
    for mname, mod in model.named_modules():
        params = list(mod.named_parameters(recurse=False))
        if any(p.dim() == 3 and p.shape[0] == num_experts for _, p in params):
            out += [(mname, mod, pname) for pname, p in params if p.dim() >= 2 and p.shape[0] == num_experts]
    if not out:
        raise CapsimError(f"no stacked routed-expert parameters ({num_experts}, ...) in the model: measure-disk "
                          "needs transformers >= 5, whose MoE experts are 3-D parameters (gate_up_proj, down_proj)")
    return out


def write_experts(tensors, path: Path) -> list[dict[str, Any]]:
    """Write each tensor's bytes at a page-aligned offset, fsync; the layout."""
    import torch

    layout, off = [], 0
    with open(path, "wb") as fh:
        for mname, mod, pname in tensors:
            t = getattr(mod, pname).detach().contiguous()
            raw = t.view(-1).view(torch.uint8).numpy()
            fh.seek(off)
            fh.write(raw.tobytes())
            m = re.search(r"\.(\d+)\.", f".{mname}.")
            layout.append({"module": mname, "param": pname, "layer": int(m.group(1)) if m else None,
                           "offset": off, "bytes": int(raw.size), "shape": list(t.shape), "dtype": str(t.dtype),
                           "expert_bytes": int(raw.size) // int(t.shape[0])})
            off = -(-(off + raw.size) // PAGE) * PAGE
        fh.truncate(off)
        fh.flush()
        os.fsync(fh.fileno())
    return layout


def map_experts(tensors, layout: list[dict[str, Any]], f: MappedFile) -> None:
    """Replace every expert parameter by a view of the mapped file with the same shape, dtype and strides."""
    import torch

    for (_, mod, pname), entry in zip(tensors, layout, strict=True):
        old = getattr(mod, pname)
        view = f.bytes[entry["offset"]:entry["offset"] + entry["bytes"]].view(old.dtype).view(old.shape)
        assert view.stride() == old.stride()
        setattr(mod, pname, torch.nn.Parameter(view, requires_grad=False))


# ---------------------------------------------------------------------------------------------------
# The measurement


def _check_modes(page_batches: list[int], batches: list[int]) -> None:
    extra = sorted(set(page_batches) - set(batches))
    if extra:
        raise CapsimError(f"page batches {extra}: not among the batches {batches}")


def measure_disk(config_or_path: str | Path, *, random_init: bool = True, batches: Iterable[int] = (1, 4, 16),
                 context: int = 128, repeats: int = 5, warmup: int = 1, page_batches: Iterable[int] = (1,),
                 page_repeats: int = 3, dtype: str = "float32", seed: int = 0, threads: int | None = 1,
                 folder: str | Path | None = None, out: str | Path | None = None, notes: str | None = None,
                 command: list[str] | None = None, progress: Callable[[str], None] | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Decode step times with the routed experts read from a file (cold, cold-4k, warm), the bytes read, and
    the drive's read rates; returns the run dict (written atomically to ``out`` when given). The experts file
    goes in ``folder`` (default: the temporary directory) and is deleted afterwards. ``progress(line)``: a line
    per step and measured case; ``on_progress(done, total)``: the cases done (each batch's modes and each read-rate
    pass) out of all, before the first and after each."""
    from capsim.traces import hf_model
    from capsim.traces.collect import RoutingRecorder
    from capsim.traces.hf_model import _require_ml, family_of, load_hf_model, model_id_of, read_config
    from capsim.traces.routers import routing_rule

    _require_ml()
    import torch
    import transformers

    t_start = time.perf_counter()
    ticks_start, own_start = _cpu_ticks(), time.process_time()
    say = progress or (lambda _msg: None)
    batches = _int_list("batches", batches)
    page_batches = list(page_batches)
    if page_batches:
        page_batches = _int_list("page batches", page_batches)
    _check_modes(page_batches, batches)
    context = _int_list("context", context)[0]
    repeats = _int_list("repeats", repeats)[0]
    page_repeats = _int_list("page repeats", page_repeats)[0]
    warmup = _int_list("warmup (at least 1: the warm steps map the pages)", warmup)[0]
    if dtype not in DTYPES:
        raise CapsimError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    _libc()  # fail early off Linux
    if out is not None:
        outputs.check_output(out, "run", "--out")  # before minutes of measuring
    folder = Path(folder) if folder is not None else Path(tempfile.gettempdir())
    if not folder.is_dir():
        raise CapsimError(f"--dir {folder}: not a directory")
    fs = filesystem_of(folder)
    if threads is not None:
        torch.set_num_threads(_int_list("threads", threads)[0])
    n_threads = torch.get_num_threads()

    raw, folder_ = read_config(config_or_path)
    family_of(raw)
    hf_model.check_weights(config_or_path, None if random_init else folder_)  # truncated checkpoint: one line, at once
    model_id = model_id_of(config_or_path, raw)
    say(f"building {model_id} ({'random init' if random_init else 'checkpoint weights'}, {dtype})")
    model, _, family = load_hf_model(config_or_path, random_init=random_init, seed=seed, device="cpu")
    model.to(dtype=getattr(torch, dtype))
    model.eval()
    mcfg = model.config
    text_cfg = getattr(mcfg, "text_config", None) or mcfg
    rule = routing_rule(family, text_cfg)
    params = int(sum(p.numel() for p in model.parameters()))
    full_config = _full_config(mcfg, raw)
    vocab = int(text_cfg.vocab_size)
    tensors = expert_tensors(model, rule.num_experts)

    workdir = Path(tempfile.mkdtemp(prefix="capsim-disk-", dir=folder))
    path = workdir / "experts.bin"
    try:
        layout = write_experts(tensors, path)
        f = MappedFile(path)
        try:
            map_experts(tensors, layout, f)
            gc.collect()
            say(f"{model_id}: {params / 1e6:.1f} M parameters, {len(layout)} expert tensors, "
                f"{f.size / MiB:.0f} MiB in {path.parent} ({fs.get('type', '?')} on {fs.get('source', '?')}), "
                f"{n_threads} threads")
            left = f.evict()
            say(f"page cache: {left} of {f.pages} pages of the file left after eviction")
            rng = np.random.default_rng(seed)
            cases = RATE_PASSES_BEFORE + RATE_PASSES_AFTER + sum(
                3 + (b in page_batches) for b in batches)  # modes and one rate pass per batch
            done = [0]

            def tick() -> None:
                done[0] += 1
                if on_progress is not None:
                    on_progress(done[0], cases)

            def rate(why: str) -> dict[str, Any]:
                p = rate_pass(f, rng, why)
                tick()
                return p

            if on_progress is not None:
                on_progress(0, cases)
            passes = [rate("before the steps") for _ in range(RATE_PASSES_BEFORE)]

            def between(b: int) -> None:
                passes.append(rate(f"after batch {b}"))

            measurements = _decode_modes(model, f, rule, family, vocab, batches, context, repeats, warmup,
                                         page_batches, page_repeats, seed, say, RoutingRecorder, between, tick)
            passes += [rate("after the steps") for _ in range(RATE_PASSES_AFTER)]
        finally:
            del tensors
            model = None
            gc.collect()
            f.close()
    finally:
        path.unlink(missing_ok=True)
        workdir.rmdir()

    blk = block_device_of(folder)
    cold = [m for m in measurements if m["mode"] != "warm"]
    verified = all(m["pages_cached_before_max"] == 0 for m in cold)
    rates = combined_rates(passes)
    run = {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "model": {"id": model_id, "config": full_config, "config_hash": tfmt.config_hash(full_config),
                  "params": params, "source": str(config_or_path), "source_config_hash": tfmt.config_hash(raw),
                  "random_init": bool(random_init), "family": family, "num_experts": rule.num_experts,
                  "top_k": rule.top_k},
        "device": {"kind": "cpu", "name": _cpu_name(), "threads": n_threads},
        "engine": ENGINE,
        "dtype": dtype,
        "attn_implementation": getattr(mcfg, "_attn_implementation", None),
        "experts_implementation": getattr(mcfg, "_experts_implementation", None),
        "experts_file": {"bytes": int(sum(e["bytes"] for e in layout)), "alignment_bytes": PAGE, "tensors": layout,
                         "mapping": "mmap.mmap(ACCESS_COPY): MAP_PRIVATE, PROT_READ|PROT_WRITE, never written; "
                                    "torch.frombuffer over it, one view per expert parameter",
                         "kept": False},
        "storage": {"filesystem": fs, "block_device": blk, "page_bytes": PAGE, "kernel": platform.release(),
                    "readahead_bytes": blk.get("readahead_bytes"), **rates, "rate_passes": passes},
        "page_cache": {
            "method": "cold and cold-4k steps: madvise(MADV_DONTNEED) over the whole mapping, then posix_fadvise(fd, "
                      "0, 0, POSIX_FADV_DONTNEED), before every step (untimed); read rates: the same before each "
                      "pass",
            "verification": "mincore(2) over the mapping after each eviction: pages of the file still in the page "
                            "cache (pages_cached_before_* per measurement)",
            "eviction_verified": verified,
            "no_cache_filesystem": fs.get("type") in NO_CACHE_FS,
            "free_page_reporting": free_page_reporting(),
        },
        "method": {
            "warmup": warmup, "repeats": repeats, "page_repeats": page_repeats, "seed": seed,
            "timer": "time.perf_counter",
            "decode": f"one forward of batch new tokens with the KV cache at {context} tokens (a prefill of min(batch,"
                      " 4) distinct random sequences tiled over the batch); the appended token cropped after each "
                      "step (untimed)",
            "modes": {"cold": "file evicted before each step; default fault readahead (read-around)",
                      "cold-4k": "file evicted before each step; madvise(MADV_RANDOM): one page per fault",
                      "warm": "whole file read into the page cache first; warm-up steps map the pages"},
            "bytes_read": "read_bytes of /proc/self/io over the step (this process's block-layer reads, readahead "
                          "included); pages_cached_after: mincore after the step",
            "routing": "RoutingRecorder hooks on one untimed forward with the step's inputs",
            "read_rates": "sequential: 16 MiB preads over the whole file after eviction (default readahead); random: "
                          "aligned preads at random offsets after eviction with POSIX_FADV_RANDOM (no readahead), "
                          f"one at a time, up to {RATE_PASS_BUDGET_S} s per size; {RATE_PASSES_BEFORE} passes before the "
                          f"steps, one after each batch, {RATE_PASSES_AFTER} after; medians over all passes",
        },
        "provenance": {
            "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "command": list(command) if command is not None else list(sys.argv),
            "torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "wall_s": round(time.perf_counter() - t_start, 1), "host_load": _host_load(ticks_start, own_start),
        },
        "notes": notes or "",
        "measurements": measurements,
    }
    if out is not None:
        write_run(out, run)
    return run


def _decode_modes(model, f: MappedFile, rule, family: str, vocab: int, batches: list[int], context: int,
                  repeats: int, warmup: int, page_batches: list[int], page_repeats: int, seed: int, say,
                  recorder_cls, between: Callable[[int], None],
                  tick: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    import torch

    def tokens(shape: tuple[int, ...], *key: int):
        g = torch.Generator().manual_seed(zlib.crc32(repr((seed, *key)).encode()))
        return torch.randint(0, vocab, shape, generator=g)

    out: list[dict[str, Any]] = []
    with torch.inference_mode():
        n_seq = min(max(batches), 4)
        base = model(input_ids=tokens((n_seq, context), 1, n_seq, context), use_cache=True,
                     logits_to_keep=1).past_key_values
        for b in batches:
            past = copy.deepcopy(base)
            past.batch_select_indices(torch.arange(b) % n_seq)
            step_ids = tokens((b, 1), 2, b, context)
            position = torch.full((b, 1), context, dtype=torch.long)

            def step(past=past, step_ids=step_ids, position=position):
                return model(input_ids=step_ids, position_ids=position, past_key_values=past, use_cache=True,
                             logits_to_keep=1)

            def crop(past=past):
                extra = past.get_seq_length() - context
                if extra:
                    past.crop(-extra)

            rec = recorder_cls(model, family, rule)
            try:
                step()
                ids, _ = rec.take(b)
            finally:
                rec.remove()
            crop()
            routed = _activated(ids)
            routed["expert_ids_by_layer"] = [sorted(int(i) for i in np.unique(ids[:, layer, :]))
                                             for layer in range(ids.shape[1])]
            modes = ["cold"] + (["cold-4k"] if b in page_batches else []) + ["warm"]
            for mode in modes:
                m = _one_mode(f, mode, step, crop, warmup, page_repeats if mode == "cold-4k" else repeats)
                m.update(batch=b, context=context, **routed)
                out.append(m)
                if tick is not None:
                    tick()
                got = m["read_bytes_median"]
                say(f"  {mode:7s} B={b:<3d} C={context}: median {m['median_s'] * 1e3:8.1f} ms (p10 "
                    f"{m['p10_s'] * 1e3:.1f}, p90 {m['p90_s'] * 1e3:.1f}), read "
                    + (f"{got / MiB:.1f} MiB" if got is not None else "? MiB")
                    + f" (file pages cached after: {m['pages_cached_after_median'] * PAGE / MiB:.1f} MiB), "
                    f"{routed['activated_experts_per_layer']:.1f}/{rule.num_experts} experts")
            del past
            gc.collect()
            between(b)
    return out


def _one_mode(f: MappedFile, mode: str, step, crop, warmup: int, repeats: int) -> dict[str, Any]:
    if mode == "cold-4k":
        f.fault_readahead(False)
    cached_full = f.prefetch() if mode == "warm" else None
    samples, read, before, after = [], [], [], []
    try:
        for i in range(warmup + repeats):
            left = f.resident_pages() if mode == "warm" else f.evict()
            r0 = io_read_bytes()
            t0 = time.perf_counter()
            step()
            dt = time.perf_counter() - t0
            r1 = io_read_bytes()
            cached = f.resident_pages()
            crop()
            if i >= warmup:
                samples.append(dt)
                read.append(None if r0 is None or r1 is None else r1 - r0)
                before.append(left)
                after.append(cached)
    finally:
        if mode == "cold-4k":
            f.fault_readahead(True)
    known = [r for r in read if r is not None]
    return {"mode": mode, "phase": "decode", **_stats(samples),
            "read_bytes": read, "read_bytes_median": float(np.median(known)) if known else None,
            "pages_cached_before": before, "pages_cached_before_max": max(before),
            "pages_cached_after": after, "pages_cached_after_median": float(np.median(after)),
            "pages_in_file": f.pages, "pages_cached_after_prefetch": cached_full}
