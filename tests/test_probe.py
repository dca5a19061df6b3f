"""`capsim probe`: a quick probe writes a measured hardware entry that loads, checks and predicts."""

import json
import math
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from capsim.cli.main import cli
from capsim.hardware import db as hwdb
from capsim.hardware.schema import Cpu
from capsim.units import parse_quantity

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("torch")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert "Traceback" not in result.output + err
    assert err.startswith("capsim: error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """One quick probe (with a file to read) shared by the tests below."""
    out = tmp_path_factory.mktemp("probe")
    data = tmp_path_factory.mktemp("data") / "blob.bin"
    data.write_bytes(b"\x5a" * (3 * 2**20 + 123))
    r = run("probe", "--quick", "--out", out, "--id", "local-cpu", "--file", data, "--json", "--gemm-shape", "64x96")
    assert r.exit_code == 0, r.output + r.stderr
    return out, json.loads(r.stdout), r.stderr


def test_entry_loads_and_checks(probed):
    out, _, stderr = probed
    assert "wrote" in stderr and "capsim probe:" in stderr
    db = hwdb.load(out)
    cpu = db.get("local-cpu")
    assert isinstance(cpu, Cpu) and cpu.memory_type is None and cpu.tdp_w is None
    assert cpu.cores.value >= 1 and cpu.threads.value >= cpu.cores.value
    for q in (cpu.cores, cpu.memory_bandwidth_bytes_per_s, cpu.max_memory_bytes, *cpu.peak_flop_per_s.values()):
        assert q.kind == "measured" and q.source == "probe-local-cpu" and q.command.startswith("capsim probe")
        assert q.date and q.value > 0
    assert db.sources["probe-local-cpu"].tier == "measured"
    assert "capsim probe" in db.sources["probe-local-cpu"].document
    assert "fp32" in cpu.peak_flop_per_s
    r = run("hw", "check", out)
    assert r.exit_code == 0 and "1 items OK" in r.output, r.output + r.stderr
    r = run("--hardware-db", out, "hw", "show", "local-cpu")
    assert r.exit_code == 0 and "probe-local-cpu" in r.output, r.output + r.stderr
    # the YAML holds no hostname
    import platform

    host = platform.node()
    if len(host) > 3:
        for path in out.rglob("*"):
            if path.is_file():
                assert host not in path.read_text(), path


def test_measurements_consistent(probed):
    out, result, _ = probed
    saved = json.loads((out / "probe" / "local-cpu.json").read_text())
    assert saved["id"] == "local-cpu" and saved["cpu"]["memory"]["read_bytes_per_s"] == result["cpu"]["memory"][
        "read_bytes_per_s"]
    mem = result["cpu"]["memory"]
    assert mem["read_bytes_per_s"] > 0 and mem["copy_bytes_per_s"] > 0 and mem["threads"] >= 1
    # first touch: (fresh - mapped) write time over the bytes written, the same tensor size as the read
    ft = mem["first_touch"]
    extra = ft["fresh_write"]["median_s"] - ft["mapped_write"]["median_s"]
    assert ft["bytes"] == mem["bytes"] and math.isclose(ft["s_per_byte"], max(extra, 0.0) / ft["bytes"])
    # reclaim: whole pieces refilled before the first refaulted one, at most all of them (quick: 8 x 8 MiB)
    rc = mem["reclaim"]
    assert (rc["bytes"], rc["piece_bytes"]) == (64 * 2**20, 8 * 2**20)
    assert rc["retained_bytes"] % rc["piece_bytes"] == 0 and 0 <= rc["retained_bytes"] <= rc["bytes"]
    assert rc["s_per_byte"] >= 0 and (rc["s_per_byte"] > 0) == (rc["refaulted_pieces"] > 0)
    # math SDPA: (call - its two matmuls) over heads x L x L score elements (quick probe: 2 heads x 128 tokens)
    am = result["cpu"]["attention_math"]
    assert (am["heads"], am["length"], am["score_elements"]) == (2, 128, 2 * 128 * 128)
    assert math.isclose(am["s_per_score"], max(am["sdpa"]["median_s"] - am["matmuls"]["median_s"], 0.0) / 32768)
    facts = result["facts"]
    assert facts["torch"] and facts["numpy"] and facts["python"] and facts["date"].endswith("Z")
    assert facts["memory_total_kib"] > 0
    cpu = hwdb.load(out).get("local-cpu")
    assert math.isclose(cpu.memory_bandwidth_bytes_per_s.value, mem["read_bytes_per_s"], rel_tol=1e-3)
    assert str(mem["threads"]) + " threads" in cpu.memory_bandwidth_bytes_per_s.note
    fp32 = result["cpu"]["gemm"]["fp32"]
    assert fp32["points"] and [p["m"] for p in fp32["points"]][0] == 1
    assert all(p["flop_per_s"] > 0 and p["median_s"] > 0 for p in fp32["points"])
    for dt, curve in result["cpu"]["gemm"].items():
        if "peak_flop_per_s" not in curve:
            assert curve.get("skipped"), dt
            continue
        best = max(curve["points"], key=lambda p: p["flop_per_s"])
        assert curve["peak_flop_per_s"] == best["flop_per_s"] and curve["peak_m"] == best["m"]
        assert 0 < curve["smallest_m_efficiency"] <= 1
        if curve["in_entry"]:
            q = cpu.peak_flop_per_s[dt]
            assert math.isclose(q.value, curve["peak_flop_per_s"], rel_tol=1e-3)
            assert f"M = {curve['peak_m']}" in q.note
        else:
            assert dt not in cpu.peak_flop_per_s
    gpu = result["gpu"]
    assert ("skipped" in gpu) or gpu["gemm"]


def test_file_read_rate(probed):
    _, result, _ = probed
    fr = result["file_read"]
    assert fr["bytes"] == 3 * 2**20 + 123 and fr["read_bytes_per_s"] > 0
    assert isinstance(fr["page_cache_drop_requested"], bool) and fr["page_cache_note"]


def test_predict_on_the_probed_cpu(probed):
    out, _, _ = probed
    r = run("--hardware-db", out, "predict", "-m", "olmoe", "-H", "local-cpu", "--precision", "fp32",
            "--no-memory-check", "--json")
    assert r.exit_code == 0, r.output + r.stderr
    rep = json.loads(r.stdout)
    assert rep["scenario"]["device"] == "local-cpu" and rep["scenario"]["compute_dtype"] == "fp32"
    assert rep["tpot_s"] > 0 and rep["ttft_s"] > 0


def test_missing_file_is_one_line_error(tmp_path):
    r = run("probe", "--quick", "--out", tmp_path / "out", "--file", tmp_path / "nope.bin")
    one_line_error(r, "--file", "no such file")
    assert not (tmp_path / "out").exists()


def test_bad_id_is_one_line_error(tmp_path):
    one_line_error(run("probe", "--quick", "--out", tmp_path, "--id", "Local CPU"), "--id", "kebab-case")


def test_cpu_without_parts_must_be_measured(probed):
    out, _, _ = probed
    data = yaml.safe_load((out / "cpus" / "local-cpu.yaml").read_text())
    data["memory_bandwidth_bytes_per_s"]["kind"] = "estimate"
    data["memory_bandwidth_bytes_per_s"]["reason"] = "a guess"
    del data["memory_bandwidth_bytes_per_s"]["command"]
    with pytest.raises(ValueError, match="may be left out only when"):
        Cpu.model_validate(data)
    assert parse_quantity(data["max_memory_bytes"]["as_published"]).value == data["max_memory_bytes"]["value"]


def test_gpu_entry_from_a_gpu_result(probed, tmp_path):
    """A GPU result (made up here: CI has no GPU) becomes an accelerator entry that loads."""
    from capsim.measure import probe_entry

    _, result, _ = probed
    curve = {"dtype": "bf16", "op": "torch.mm(bf16)", "n": 8192, "k": 8192, "in_entry": True,
             "points": [{"m": 1, "flop_per_s": 2.0e12}, {"m": 4096, "flop_per_s": 7.0e14}],
             "peak_flop_per_s": 7.0e14, "peak_m": 4096, "smallest_m": 1, "smallest_m_efficiency": 2.0e12 / 7.0e14}
    gpu = {"name": "NVIDIA H100 80GB HBM3", "vendor": "NVIDIA", "compute_capability": "9.0",
           "memory_bytes": 85 * 10**9, "multiprocessors": 132, "power_limit": "700.00 W", "driver": "550.0",
           "memory": {"read_bytes_per_s": 3.0e12, "copy_bytes_per_s": 2.6e12},
           "gemm": {"bf16": curve, "int8": {"dtype": "int8", "in_entry": False, "skipped": "x"}},
           "transfers": {"bytes": 2**30, "host_to_device_bytes_per_s": 5.0e10, "device_to_host_bytes_per_s": 5.2e10}}
    written = probe_entry.write_entry({**result, "gpu": gpu}, tmp_path, "box", "capsim probe --id box")
    assert {"cpu", "gpu", "source", "json"} <= set(written)
    db = hwdb.load(tmp_path)
    acc = db.get("box-gpu")
    assert acc.kind == "accelerator" and acc.tdp_w.value == 700.0 and set(acc.peak_flop_per_s) == {"bf16"}
    assert math.isclose(acc.memory.bandwidth_bytes_per_s.value, 3.0e12, rel_tol=1e-3)
    assert "50 GB/s" in acc.notes
    r = run("--hardware-db", tmp_path, "predict", "-m", "olmoe", "-H", "box-gpu", "--json")
    assert r.exit_code == 0, r.output + r.stderr
    no_power = {**gpu, "power_limit": None}
    written = probe_entry.write_entry({**result, "gpu": no_power}, tmp_path / "b", "box", "capsim probe --id box")
    assert "gpu" not in written and hwdb.load(tmp_path / "b").get("box").kind == "cpu"


def test_cold_weights_cycle_copies_larger_than_the_budget():
    import dataclasses

    from capsim.measure import probe

    s = dataclasses.replace(probe.QUICK, gemm_cold_bytes=probe.MiB, gemm_ms=(1, 4))
    curve = probe.gemm_curve("fp32", s)
    # N = K = 256 fp32 weights are 256 KiB: 1 MiB of copies is 4 weights, each call uses the next one
    assert curve["weights_cycled"] == 4 and curve["weights_cycled_bytes"] == probe.MiB
    assert [p["m"] for p in curve["points"]] == [1, 4]


def test_weight_shape_curves_run_as_nn_linear_and_cold(probed):
    from capsim.measure.gemm_curve import curves_from_probe

    out, result, _ = probed
    (curve,) = result["cpu"]["gemm_linear"]["fp32"]
    assert (curve["k"], curve["n"]) == (64, 96) and "W stored N x K" in curve["op"]
    # 64 x 96 fp32 = 24,576 B; cycled copies reach the quick memory size, 16 MiB: ceil(16 MiB / 24,576) = 683
    assert curve["weights_cycled"] == 683 and curve["weights_cycled_bytes"] == 683 * 24576
    assert [p["m"] for p in curve["points"]] == [1, 4, 16, 64, 256]
    assert "--gemm-shape 64x96" in (out / "sources" / "local-cpu.yaml").read_text()
    # an engine profile's curves: the shape curve (preferred over the N = K ones), as fractions of the highest
    # rate any fp32 curve reached
    (k, n, pts), = curves_from_probe(out / "probe" / "local-cpu.json", "fp32")
    peak = max(p["flop_per_s"] for key in ("gemm", "gemm_small") for p in result["cpu"][key]["fp32"]["points"])
    peak = max([peak] + [p["flop_per_s"] for p in curve["points"]])
    assert (k, n) == (64.0, 96.0)
    assert [f for _, f in pts] == pytest.approx([p["flop_per_s"] / peak for p in curve["points"]])
    squares = curves_from_probe(out / "probe" / "local-cpu.json", "fp32", (256,))
    assert [(c[0], c[1]) for c in squares] == [(256.0, 256.0)]


def test_gemm_shapes_of_a_model_and_bad_shapes(tmp_path):
    from capsim.cli.probe import _gemm_shapes

    olmoe = str(ROOT / "validation" / "measured" / "shapes" / "olmoe-like.json")
    # OLMoE-like: hidden 1024, 8 heads x 128 (q, k, v, o: 1024 x 1024), router 1024 x 64, experts gate_up
    # 1024 x (2 x 512) and down 512 x 1024, LM head 1024 x 50304; then the extra 7x9
    assert _gemm_shapes((olmoe,), ("7x9", "1024x1024")) == ((1024, 1024), (1024, 64), (512, 1024), (1024, 50304),
                                                            (7, 9))
    one_line_error(run("probe", "--quick", "--out", tmp_path, "--gemm-shape", "64by96"), "--gemm-shape", "KxN")
    one_line_error(run("probe", "--quick", "--out", tmp_path, "--gemm-shapes-of", tmp_path / "none.json"),
                   "--gemm-shapes-of")


def test_add_reclaim_keeps_the_rest_of_the_probe(probed, tmp_path):
    import shutil

    out, _, _ = probed
    copy = tmp_path / "hw"
    shutil.copytree(out, copy)
    before = json.loads((copy / "probe" / "local-cpu.json").read_text())
    del before["cpu"]["memory"]["reclaim"]
    (copy / "probe" / "local-cpu.json").write_text(json.dumps(before))
    entry_before = yaml.safe_load((copy / "cpus" / "local-cpu.yaml").read_text())
    r = run("probe", "--quick", "--out", copy, "--id", "local-cpu", "--add-reclaim")
    assert r.exit_code == 0, r.output + r.stderr
    after = json.loads((copy / "probe" / "local-cpu.json").read_text())
    reclaim = after["cpu"]["memory"].pop("reclaim")
    assert after == before  # nothing else changed
    assert "--add-reclaim" in reclaim["command"] and reclaim["date"].endswith("Z") and reclaim["bytes"] == 64 * 2**20
    # the hardware entry's memory_faults now carry the reclaim (the machine facts the eager engine pays), the
    # rest of the entry as it was
    entry = yaml.safe_load((copy / "cpus" / "local-cpu.yaml").read_text())
    faults = entry.pop("memory_faults")
    assert entry == {k: v for k, v in entry_before.items() if k != "memory_faults"}
    assert faults["retained_free_bytes"]["value"] == reclaim["retained_bytes"]
    assert faults["refault_s_per_byte"]["value"] == pytest.approx(reclaim["s_per_byte"], rel=1e-3)
    assert "--add-reclaim" in faults["refault_s_per_byte"]["command"]
    one_line_error(run("probe", "--quick", "--out", tmp_path / "none", "--add-reclaim"), "--add-reclaim",
                   "no probe result")
