"""The SSD path: exact request-size and read-around pricing, the committed disk runs re-validated without
re-measuring, and a smoke run of `capsim measure-disk` on a tiny model."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from capsim import engines, precision
from capsim.cli.main import cli
from capsim.hardware import db as hwdb
from capsim.hardware.target import resolve_target
from capsim.model.catalogue import load_spec
from capsim.scenario import from_parts
from capsim.sim import ssd
from capsim.sim.offload import offload_step
from capsim.sim.ops import Work
from capsim.sim.request import simulate_step
from capsim.sim.shape import shape_of
from capsim.traces.format import config_hash
from capsim.validation.disk import predict_run, validate_disk

ROOT = Path(__file__).resolve().parents[1]
DISK_RUNS = ROOT / "validation" / "measured" / "disk"
SHAPES = ROOT / "validation" / "measured" / "shapes"
MiB = 2**20

# ---------------------------------------------------------------------------------------------------
# Request size: t(s) = t_req + s / B_seq, t_req = 4096 / R_4k - 4096 / B_seq


def test_request_overhead_and_rates_exact():
    seq, r4k = 2e9, 40.96e6  # 4 KiB at 40.96 MB/s: 100 us per read; 4 KiB at 2 GB/s: 2.048 us
    assert float(ssd.request_overhead_s(seq, r4k)) == pytest.approx(100e-6 - 2.048e-6, rel=1e-12)
    assert float(ssd.read_rate(4096, seq, r4k)) == pytest.approx(r4k, rel=1e-12)  # the 4 KiB end is R_4k
    # 1 MiB: 97.952 us + 1,048,576 / 2e9 = 524.288 us -> 1,048,576 B / 622.24 us
    assert float(ssd.read_rate(MiB, seq, r4k)) == pytest.approx(MiB / 622.24e-6, rel=1e-12)
    assert float(ssd.read_rate(2**40, seq, r4k)) == pytest.approx(seq, rel=1e-6)  # the large end is B_seq
    # 1 GiB in 4 KiB requests: 262,144 reads x 100 us = 26.2144 s
    assert float(ssd.read_seconds(2**30, 4096, seq, r4k)) == pytest.approx(26.2144, rel=1e-12)
    # a drive whose 4 KiB rate beats its sequential rate has no request overhead (never negative)
    assert float(ssd.request_overhead_s(1e9, 2e9)) == 0.0
    # vectorised over scenarios
    assert ssd.read_rate(np.array([4096, MiB]), seq, r4k).shape == (2,)


# ---------------------------------------------------------------------------------------------------
# mmap read-around (mm/filemap.c do_sync_mmap_readahead, mm/readahead.c page_cache_async_ra)


def test_readaround_windows_exact():
    w = 8 * MiB  # the window; its asynchronous mark is w/4 = 2 MiB past the faulting page
    assert float(ssd.readaround_windows(2 * MiB, w)) == 1  # the slice ends before the mark: one window
    assert float(ssd.readaround_windows(2 * MiB + 4096, w)) == 2  # touches the mark: the next window follows
    assert float(ssd.readaround_windows(4 * MiB, w)) == 2  # ends at w/2, where the second window starts
    assert float(ssd.readaround_windows(4 * MiB + 1, w)) == 3  # enters the second window: a third follows
    # Mixtral-like gate_up slice, 28 MiB: 2 + ceil((28 - 4) / 8) = 5 windows (40 MiB)
    assert float(ssd.readaround_windows(28 * MiB, w)) == 5
    # the kernel default, 128 KiB, over a 4 MiB slice: 2 + ceil((4096 - 64) / 128) = 2 + 32 = 34 windows
    assert ssd.LINUX_DEFAULT_READAHEAD_BYTES == 128 * 1024
    assert float(ssd.readaround_windows(4 * MiB, ssd.LINUX_DEFAULT_READAHEAD_BYTES)) == 34


def test_mmap_read_bytes_exact():
    w = 8 * MiB
    # OLMoE-like gate_up: 64 slices of 4 MiB, 8 activated; 2 windows = 16 MiB per activated slice, so a byte
    # is read unless none of the 4 slices whose windows reach it is activated: C(60, 8) / C(64, 8).
    unread = math.comb(60, 8) / math.comb(64, 8)
    assert float(ssd._unactivated_fraction(64, 8, 4)) == pytest.approx(unread, rel=1e-12)
    assert float(ssd.mmap_read_bytes(4 * MiB, 64, 8, w)) == pytest.approx(256 * MiB * (1 - unread), rel=1e-12)
    # down: 2 MiB slices, 1 window = 8 MiB = 4 slices: the same fraction of 128 MiB
    assert float(ssd.mmap_read_bytes(2 * MiB, 64, 8, w)) == pytest.approx(128 * MiB * (1 - unread), rel=1e-12)
    # Mixtral-like gate_up: 8 slices of 28 MiB, 2 activated; 40 MiB per slice -> k = 10/7 slices, between
    # C(7, 2)/C(8, 2) = 6/8 (k = 1) and C(6, 2)/C(8, 2) = 30/56 (k = 2), weight 3/7 on k = 2
    unread = (4 / 7) * (6 / 8) + (3 / 7) * (30 / 56)
    assert float(ssd.mmap_read_bytes(28 * MiB, 8, 2, w)) == pytest.approx(224 * MiB * (1 - unread), rel=1e-12)
    # MADV_RANDOM (one page per fault): exactly the activated slices, in whole pages
    assert float(ssd.mmap_read_bytes(4 * MiB, 64, 8, ssd.PAGE_BYTES)) == 32 * MiB
    assert float(ssd.mmap_read_bytes(5000, 64, 2, ssd.PAGE_BYTES)) == 2 * 8192
    # every slice activated: the whole matrix, however large the window
    assert float(ssd.mmap_read_bytes(2 * MiB, 64, 64, w)) == 128 * MiB
    # never less than the activated slices themselves, and monotone in the activated count
    got = ssd.mmap_read_bytes(MiB, 32, np.arange(1, 33), w)
    assert np.all(np.diff(got) >= 0) and np.all(got >= np.arange(1, 33) * MiB)


# ---------------------------------------------------------------------------------------------------
# The offload path with a drive


def _mixtral_step():
    s = shape_of(load_spec("mixtral")[0], precision.PRECISIONS["bf16"])
    prof = engines.load("roofline")
    sc = from_parts(s, peak_flop_per_s={"matmul": 1e15, "attention": 1e15, "vector": 1e15},
                    bandwidth_bytes_per_s=3.35e12, profile=prof)
    step, t = simulate_step(sc, Work(tokens=1, seqs=1, pairs=100, kv_read_tokens=100, decode=True), {"activated": 2.0})
    return s, step, t, prof


def test_offload_from_a_drive_is_priced_by_request_size():
    # Mixtral-8x7B bf16, batch 1, hit rate 0.5: 11,274,289,152 miss bytes (tests/test_offload_predict.py).
    # KIOXIA CM6 (hardware_db/storage/kioxia-cm6.yaml): 6.9 GB/s sequential, 1.4 M random 4 KiB reads/s.
    s, step, t, prof = _mixtral_step()
    miss, seq, r4k = 11_274_289_152, 6.9e9, 1.4e6 * 4096
    kw = dict(hit_rate=0.5, link_bytes_per_s=32e9, profile=prof)
    plain = offload_step(step, t, s, mode="gpu-fetch", **kw)
    assert float(plain.offload_s) == pytest.approx(miss / 32e9)  # DRAM tier: unchanged
    # one request per expert matrix: 176,160,768 params / 3 matrices x 2 bytes = 117,440,512 bytes
    whole = ssd.SsdRead(seq, r4k, request_bytes=117_440_512)
    t_req = 1 / 1.4e6 - 4096 / 6.9e9
    drive_s = miss / (117_440_512 / (t_req + 117_440_512 / seq))
    got = offload_step(step, t, s, mode="gpu-fetch", ssd=whole, **kw)
    assert float(got.offload_s) == pytest.approx(max(miss / 32e9, drive_s), rel=1e-12)  # the drive is slower
    pages = offload_step(step, t, s, mode="gpu-fetch", ssd=ssd.SsdRead(seq, r4k, request_bytes=4096), **kw)
    assert float(pages.offload_s) == pytest.approx(miss / r4k, rel=1e-12)  # 4 KiB requests: the IOPS bound
    cpu = offload_step(step, t, s, mode="cpu", host_bandwidth_bytes_per_s=200e9, host_peak_flop_per_s=2e12, **kw)
    cpu_ssd = offload_step(step, t, s, mode="cpu", host_bandwidth_bytes_per_s=200e9, host_peak_flop_per_s=2e12,
                           ssd=whole, **kw)
    assert float(cpu_ssd.offload_s) == pytest.approx(float(cpu.offload_s) + drive_s, rel=1e-12)  # read, then compute


# ---------------------------------------------------------------------------------------------------
# The committed disk runs


def _validated():
    db = hwdb.load(ROOT / "validation" / "hardware")
    return validate_disk(DISK_RUNS, resolve_target(db, "local-cpu-1t"), engines.load("hf-eager"), "fp32")


def test_disk_runs_match_their_shapes_and_were_evicted():
    for f in sorted(DISK_RUNS.glob("*.json")):
        run = json.loads(f.read_text())
        assert run["format"] == "capsim-disk-run" and run["version"] == 1
        shape = json.loads((SHAPES / f.name).read_text())
        assert run["model"]["source_config_hash"] == config_hash(shape), f"{f.name}: shape changed, re-measure"
        assert run["model"]["config_hash"] == config_hash(run["model"]["config"])
        assert run["page_cache"]["eviction_verified"] is True
        assert run["device"]["threads"] == 1 and run["provenance"]["host_load"] is not None
        assert run["storage"]["filesystem"]["type"] and run["storage"]["readahead_bytes"]
        modes = {(m["mode"], m["batch"]) for m in run["measurements"]}
        assert modes == {("cold", 1), ("cold", 4), ("cold", 16), ("warm", 1), ("warm", 4), ("warm", 16),
                         ("cold-4k", 1)}
        for m in run["measurements"]:
            if m["mode"] == "warm":
                assert m["read_bytes_median"] == 0  # served from the page cache
            else:
                assert m["pages_cached_before_max"] == 0  # evicted before every timed step
                assert m["read_bytes_median"] == m["pages_cached_after_median"] * run["storage"]["page_bytes"]


def test_disk_validation_gate():
    # The committed runs re-predicted (nothing fitted to them): the hf-eager profile for the warm step plus the
    # priced reads. Results (validation/DISK.md): bytes read within 3.0% per case; cold and cold-4k together
    # median |error| 20.5%, max 50.4% (cold alone 24.7% / 50.4%: mixtral-like cold b1 and b4 over-predict their
    # read-around reads by +42% and +50%); warm (the CPU model's own error) median 4.0%. Before the per-shape GEMM
    # curves the warm step was under-predicted, which hid part of the read over-prediction (then 18.8% / 46.8%).
    # An earlier run with the same protocol gave cold 12.0% / 22.6%: the virtual disk's rate drifts between runs
    # (its streaming passes range 0.55-2.2 GB/s), so the bounds leave room for that.
    result = _validated()
    rows = result["rows"]
    assert len(rows) == 14
    for r in rows:
        if r["mode"] != "warm":
            assert r["eviction_verified"]
            assert abs(r["predicted_read_bytes"] / r["measured_read_bytes"] - 1) <= 0.10, r["case"]
    cold = [abs(r["error_pct"]) for r in rows if r["mode"] != "warm"]
    assert np.median(cold) <= 25.0 and max(cold) <= 55.0
    warm = [abs(r["error_pct"]) for r in rows if r["mode"] == "warm"]
    assert np.median(warm) <= 10.0


def test_validate_disk_cli_and_committed_report(tmp_path):
    report = tmp_path / "DISK.md"
    r = CliRunner().invoke(cli, ["validate", "--disk", "--max-median-error", "25", "--report", str(report)])
    assert r.exit_code == 0, r.output
    assert "cold-4k" in r.output and "bytes read" in r.output
    committed = (ROOT / "validation" / "DISK.md").read_text()
    # the committed report is the current one (re-run `capsim validate --disk --report validation/DISK.md`)
    assert report.read_text().replace(str(report), "validation/DISK.md") == committed
    r = CliRunner().invoke(cli, ["validate", "--disk", "--json"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)["cases"]) == 14


# ---------------------------------------------------------------------------------------------------
# Smoke: the measurement itself on a tiny model (a few seconds)


def test_measure_disk_tiny_model(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from capsim.measure.scaling import scale_config

    cfg = scale_config(json.loads((SHAPES / "olmoe-like.json").read_text()), layers=2, hidden=64, vocab=256,
                       experts=8, intermediate=32)
    cfg.update(num_experts_per_tok=2, max_position_embeddings=64)
    src = tmp_path / "tiny.json"
    src.write_text(json.dumps(cfg))
    out = tmp_path / "runs" / "tiny.json"
    r = CliRunner().invoke(cli, ["measure-disk", "--model", str(src), "--random-init", "--batches", "1,2",
                                 "--context", "8", "--repeats", "2", "--page-repeats", "1", "--dir", str(tmp_path),
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    run = json.loads(out.read_text())
    assert run["format"] == "capsim-disk-run" and run["device"]["threads"] == 1
    assert {m["mode"] for m in run["measurements"]} == {"cold", "cold-4k", "warm"}
    assert set(run["provenance"]) >= {"date", "command", "torch", "transformers", "host_load"}
    assert not list(tmp_path.glob("capsim-disk-*"))  # the experts file is gone
    layout = run["experts_file"]["tensors"]
    assert [t["param"] for t in layout] == ["gate_up_proj", "down_proj"] * 2
    assert all(t["offset"] % run["experts_file"]["alignment_bytes"] == 0 for t in layout)
    assert run["storage"]["sequential_bytes_per_s"] > 0 and run["storage"]["random_4k_bytes_per_s"] > 0
    for m in run["measurements"]:
        assert len(m["samples_s"]) == (1 if m["mode"] == "cold-4k" else 2) and m["median_s"] > 0
        assert all(1 <= a <= 8 for a in m["activated_by_layer"])
    if run["page_cache"]["eviction_verified"] and os.path.exists("/proc/self/io"):
        cold = [m for m in run["measurements"] if m["mode"] == "cold"]
        assert all(m["read_bytes_median"] > 0 for m in cold)  # the experts came off the drive
    # the prediction side reads the tiny run too
    db = hwdb.load(ROOT / "validation" / "hardware")
    rows = predict_run(run, "tiny", resolve_target(db, "local-cpu-1t"), engines.load("hf-eager"))
    assert len(rows) == len(run["measurements"]) and all(r["predicted_s"] > 0 for r in rows)
