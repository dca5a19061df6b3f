"""The SSD path checked against measured runs: decode steps with the routed experts read from a file on disk.

A disk run (``capsim measure-disk``, format capsim-disk-run v1) holds decode steps in three modes. Each is
predicted from the warm step (the experts in DRAM: the committed engine profile on the probed CPU, exactly
as :mod:`capsim.validation.cases` predicts a measured CPU step, with the run's recorded routing) plus, for
the cold modes, the drive reads the step's page faults wait for (:mod:`capsim.sim.ssd`), one after the
other (a fault stalls the thread that computes):

    warm     t_warm (the DRAM tier; nothing read)
    cold     t_warm + mmap_read_bytes(slices, read-around window w) / rate(w)
    cold-4k  t_warm + activated bytes / rate(4 KiB)          (MADV_RANDOM: one page per fault)

with ``rate(s) = s / (t_req + s / B_seq)`` and ``t_req`` from the random-4 KiB rate, both measured on the
same file in the same run, ``w`` the block device's readahead read from sysfs, and the activated experts
per MoE layer as the run recorded them. Nothing is fitted to these cases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from capsim import precision
from capsim.engines import EngineProfile
from capsim.errors import CapsimError
from capsim.hardware.target import Target
from capsim.model.spec import spec_from_config
from capsim.sim import ssd
from capsim.sim.shape import shape_of
from capsim.validation.cases import DTYPE_PRECISION, Case, predict_case

DISK_FORMAT, DISK_VERSION = "capsim-disk-run", 1


def load_disk_run(path: Path) -> dict[str, Any]:
    import json

    try:
        run = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CapsimError(f"{path}: unreadable disk run file ({err})") from None
    if not isinstance(run, dict) or run.get("format") != DISK_FORMAT or run.get("version") != DISK_VERSION:
        raise CapsimError(f"{path}: not a {DISK_FORMAT} version {DISK_VERSION} file")
    return run


def read_bytes(run: dict[str, Any], m: dict[str, Any]) -> float:
    """Predicted bytes a measurement's step reads from the drive (0 for warm)."""
    if m["mode"] == "warm":
        return 0.0
    st = run["storage"]
    w = st["readahead_bytes"] if m["mode"] == "cold" else ssd.PAGE_BYTES
    if m["mode"] == "cold" and not w:
        raise CapsimError("the run file has no readahead_bytes (storage): cannot price the read-around")
    tensors = run["experts_file"]["tensors"]
    layers = sorted({t["layer"] for t in tensors})
    e = run["model"]["num_experts"]
    return float(sum(ssd.mmap_read_bytes(t["expert_bytes"], e, m["activated_by_layer"][layers.index(t["layer"])], w)
                     for t in tensors))


def read_seconds(run: dict[str, Any], m: dict[str, Any], nbytes: float) -> float:
    st = run["storage"]
    request = st["readahead_bytes"] if m["mode"] == "cold" else ssd.PAGE_BYTES
    return float(ssd.read_seconds(nbytes, request, st["sequential_bytes_per_s"], st["random_4k_bytes_per_s"]))


def predict_run(run: dict[str, Any], name: str, target: Target, profile: EngineProfile,
                dtype: str = "fp32") -> list[dict[str, Any]]:
    prec = precision.get(DTYPE_PRECISION.get(run.get("dtype", "float32"), "fp32"))
    try:
        shape = shape_of(spec_from_config(run["model"]["config"], name), prec)
    except CapsimError as err:
        raise CapsimError(f"{name}: model.config: {err}") from None
    warm_measured = {m["batch"]: m["median_s"] for m in run["measurements"] if m["mode"] == "warm"}
    rows = []
    for m in run["measurements"]:
        case = Case(id=f"{name}/{m['mode']}/b{m['batch']}/{m['context']}", run=name, phase="decode",
                    batch=int(m["batch"]), length=int(m["context"]), measured_s=float(m["median_s"]),
                    spread=(float(m["p10_s"]), float(m["p90_s"])), activated=m["activated_experts_per_layer"],
                    shape=shape)
        warm = predict_case(case, target, profile, dtype)
        nbytes = read_bytes(run, m)
        t_read = read_seconds(run, m, nbytes) if nbytes else 0.0
        pred = warm + t_read
        rows.append({
            "case": case.id, "mode": m["mode"], "batch": case.batch, "context": case.length,
            "predicted_s": pred, "predicted_warm_s": warm, "predicted_read_s": t_read,
            "measured_s": case.measured_s, "measured_p10_s": case.spread[0], "measured_p90_s": case.spread[1],
            "measured_read_s": case.measured_s - warm_measured[case.batch] if case.batch in warm_measured else None,
            "predicted_read_bytes": nbytes, "measured_read_bytes": m.get("read_bytes_median"),
            "activated_experts_per_layer": m["activated_experts_per_layer"],
            "error_pct": 100.0 * (pred - case.measured_s) / case.measured_s,
            "eviction_verified": m["mode"] == "warm" or m["pages_cached_before_max"] == 0,
        })
    return rows


def aggregates(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in ("cold", "cold-4k", "warm", "all"):
        err = [abs(r["error_pct"]) for r in rows if key == "all" or r["mode"] == key]
        if err:
            out[key] = {"cases": len(err), "median_abs_pct": float(np.median(err)), "max_abs_pct": float(np.max(err))}
    got = [(r["predicted_read_bytes"], r["measured_read_bytes"]) for r in rows
           if r["mode"] != "warm" and r["measured_read_bytes"]]
    if got:
        err = [abs(100.0 * (p - m) / m) for p, m in got]
        out["bytes read"] = {"cases": len(err), "median_abs_pct": float(np.median(err)), "max_abs_pct": float(np.max(err))}
    return out


def validate_disk(folder: Path, target: Target, profile: EngineProfile, dtype: str = "fp32") -> dict[str, Any]:
    files = sorted(Path(folder).glob("*.json"))
    if not files:
        raise CapsimError(f"{folder}: no disk run files (*.json); run validation/measured/disk/run_disk.sh")
    runs = {f.stem: load_disk_run(f) for f in files}
    rows = [r for name, run in runs.items() for r in predict_run(run, name, target, profile, dtype)]
    return {"rows": rows, "aggregates": aggregates(rows), "runs": runs}


def rate_check(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The request-size rule beside the measured random-read rates of each size (one read at a time)."""
    st = run["storage"]
    seq, r4k = st["sequential_bytes_per_s"], st["random_4k_bytes_per_s"]
    out = []
    for size, rate in st["random_bytes_per_s"].items():
        rule = float(ssd.read_rate(int(size), seq, r4k))
        out.append({"request_bytes": int(size), "measured_bytes_per_s": rate, "rule_bytes_per_s": rule,
                    "error_pct": 100.0 * (rule - rate) / rate})
    return out


def _size(n: float) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n / 1024:g} KiB"


def markdown(result: dict[str, Any], command: str, profile: EngineProfile, hardware: str) -> str:
    runs, rows, agg = result["runs"], result["rows"], result["aggregates"]
    first = next(iter(runs.values()))
    st, pc, prov = first["storage"], first["page_cache"], first["provenance"]
    fs, blk = st["filesystem"], st["block_device"]
    ra = st["readahead_bytes"]
    L = [f"# Validation: the SSD path (experts read from a file on disk), {profile.id} on {hardware}", "",
         f"Command: `{command}`. Runs: `validation/measured/disk/*.json` (`validation/measured/disk/run_disk.sh`, "
         f"{prov['date']}, torch {prov['torch']}, transformers {prov['transformers']}, {first['device']['name']}, "
         f"{first['device']['threads']} torch thread).", "",
         "## What was measured", "",
         "A real transformers MoE model (the committed shapes `validation/measured/shapes/*.json`, random weights, "
         f"{first['dtype']}) with every routed-expert parameter (`gate_up_proj`, `down_proj`: one stacked 3-D tensor "
         "per MoE layer) written page-aligned to one file, `fsync`-ed, and replaced by a view of the same shape over "
         "a private memory map of that file (never written). Decode steps (batch 1, 4, 16; 128 tokens in the KV "
         "cache) then read an expert only through page faults on the file. Modes:", "",
         "- **cold**: before every step the file leaves the page cache; the faults read the activated experts plus "
         f"the kernel's read-around (the block device's `read_ahead_kb`: **{ra // 1024 if ra else '?'} KiB** on this "
         f"machine's `{blk.get('name', '?')}`; the kernel default is 128 KiB);",
         "- **cold-4k**: as cold, with `madvise(MADV_RANDOM)`: no read-around, one 4 KiB page per fault;",
         "- **warm**: the whole file in the page cache first (the DRAM tier).", "",
         f"File system: {fs.get('type', '?')} on {fs.get('source', '?')} (mounted at {fs.get('mount_point', '?')}); "
         f"block queue: rotational={blk.get('rotational')}, max_sectors_kb={blk.get('max_sectors_kb')}, "
         f"scheduler={blk.get('scheduler')}; kernel {st['kernel']}, page {st['page_bytes']} B. This is a virtual "
         "machine's disk (virtio): its rates are what the guest sees, which may include the host's caching; they "
         "are not a datasheet NVMe drive's.", "",
         "### Page cache", "",
         f"Eviction: {pc['method']}. Verification: {pc['verification']}. **Eviction verified in every run: "
         f"{'yes' if all(r['page_cache']['eviction_verified'] for r in runs.values()) else 'NO'}** (0 pages of the "
         "file cached before every cold step). Bytes read per step: `read_bytes` of `/proc/self/io` (equal to the "
         "file pages cached after the step in every cold case). A cold step is the worst case of an SSD tier: in "
         "a serving engine the page cache keeps whatever experts fit in free DRAM, and only misses read the drive; "
         "the warm step is the other end. Neither `posix_fadvise` nor `mincore` needs root; on tmpfs (no backing "
         "drive) nothing can be evicted and the run file says so." + (
             " This VM's virtio balloon reports free pages to the host (`VIRTIO_BALLOON_F_REPORTING`): memory the "
             "guest freed seconds earlier must be backed by the host again when the page cache reuses it. A streaming "
             "pass after a pause was seen at ~0.6 GB/s with ~1.3 s of kernel CPU time and the disk idle most of it, "
             "the pass right after at ~2 GB/s; so every timed streaming pass follows an untimed one over the file, as "
             "every timed step follows a warm-up step (each cold step reuses the pages the step before it freed)."
             if any(r["page_cache"].get("free_page_reporting") for r in runs.values()) else ""), "",
         "## How a read is priced (`capsim/sim/ssd.py`)", "",
         "A request of `s` bytes costs `t_req + s / B_seq`; `B_seq` is the streaming rate (16 MiB reads, default "
         "readahead, after an untimed streaming pass) and `t_req = 4096 / R_4k - 4096 / B_seq` from the random-4 KiB rate `R_4k` (one read at a "
         "time, as a page fault waits for its read), both measured on the experts file in the same run (medians of "
         "passes spread over the run: before the steps, after each batch, after the steps). An mmap fault reads a read-around window of `w` centred on the "
         "faulting page, then one more window each time the access enters the previous one (mm/filemap.c, "
         "mm/readahead.c): an expert slice of `m` bytes costs 1, 2 or `2 + ceil((m - w/2) / w)` windows, and "
         "windows of neighbouring activated experts are counted once (uniform routing over the slices). cold-4k "
         "reads exactly the activated slices in 4 KiB requests. The read time adds to the warm step (a fault "
         "stalls the computing thread). The warm step is the committed `hf-eager` profile (not refitted) on "
         f"`{hardware}` with the run's routing.", "",
         "### Drive rates measured on the experts file", ""]
    L += ["| run | sequential | random 4 KiB | 64 KiB | 1 MiB | 8 MiB | read-ahead |", "|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        s = run["storage"]
        rnd = s["random_bytes_per_s"]
        cells = [f"{rnd[k] / 1e6:.0f} MB/s" if k in rnd else "-" for k in ("4096", "65536", "1048576", "8388608")]
        L.append(f"| {name} | {s['sequential_bytes_per_s'] / 1e9:.2f} GB/s | " + " | ".join(cells)
                 + f" | {_size(s['readahead_bytes']) if s['readahead_bytes'] else '?'} |")
    L += ["", "The request-size rule (fixed by the 4 KiB and sequential rates) beside the other measured sizes "
          "(random reads, one at a time):", "", "| run | request | measured | rule | rule error |", "|---|---|---|---|---|"]
    for name, run in runs.items():
        for c in rate_check(run):
            L.append(f"| {name} | {_size(c['request_bytes'])} | {c['measured_bytes_per_s'] / 1e6:.0f} MB/s | "
                     f"{c['rule_bytes_per_s'] / 1e6:.0f} MB/s | {c['error_pct']:+.0f}% |")
    L += ["", "Isolated reads of 64 KiB - 8 MiB reach less than the streaming rate: the rule's large-request end is the "
          "rate with the kernel's readahead keeping requests in flight, which is how mmap faults and sequential "
          "reads run, not the rate of one large request at a time.", "",
          "## Predicted vs measured", "",
          "| mode | cases | median abs error | max abs error |", "|---|---|---|---|"]
    for k, v in agg.items():
        L.append(f"| {k} | {v['cases']} | {v['median_abs_pct']:.1f}% | {v['max_abs_pct']:.1f}% |")
    L += ["", "The warm errors are the CPU model's own (the same cases in `validation/REPORT.md`: e.g. mixtral-like "
          "decode b16/128 -34%); a cold case's error is its warm error plus the read's.", "",
          "| case | predicted | of which read | measured (p10-p90) | measured - warm | read predicted / measured | "
          "error |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        mr = r["measured_read_bytes"]
        rd = (f"{r['predicted_read_bytes'] / 2**20:.0f} / {mr / 2**20:.0f} MiB" if r["mode"] != "warm" and mr is not None
              else "-")
        ms = f"{r['measured_read_s'] * 1e3:.1f} ms" if r["mode"] != "warm" and r["measured_read_s"] is not None else "-"
        L.append(f"| {r['case']} | {r['predicted_s'] * 1e3:.1f} ms | {r['predicted_read_s'] * 1e3:.1f} ms | "
                 f"{r['measured_s'] * 1e3:.1f} ms ({r['measured_p10_s'] * 1e3:.1f}-{r['measured_p90_s'] * 1e3:.1f}) | "
                 f"{ms} | {rd} | {r['error_pct']:+.1f}% |")
    L += ["", "## Not modelled, and limits", "",
          "- Reads and compute are added: the kernel's asynchronous readahead lets part of a cold step's reading run "
          "under its compute, so the sum is an upper bound; minor faults that map pages already read (fault-around) "
          "are not priced.",
          "- The request-size rule is fixed by two rates; isolated random reads of 64 KiB - 1 MiB run up to ~1.5x "
          "slower than it says (table above). mmap faults use the read-around window, where the rule holds.",
          "- One virtual disk, two shapes, 14 cases, fp32, one torch thread. The disk's rate drifts between passes "
          "(`rate_passes` in the run files) and between runs of the campaign, so a cold case's error moves by "
          "tens of percent from run to run; the bytes read do not. No datasheet NVMe drive was measured.",
          "- `capsim predict --offload cpu|gpu-fetch --expert-tier ssd` prices misses with the same request-size "
          "rule from the drive's datasheet rates (sequential, 4 KiB IOPS); datasheet IOPS are at a deep queue, "
          "faster than the queue-depth-1 reads of demand paging measured here."]
    return "\n".join(L) + "\n"
