"""ISA paths (capsim.hardware.isa): the peak of each kernel family a CPU has, and which one an engine runs on."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsim import engines
from capsim.engines.kernels import parse
from capsim.errors import CapsimError
from capsim.hardware import db as hwdb
from capsim.hardware import isa
from capsim.hardware.target import cpu_paths, resolve_target

ROOT = Path(__file__).resolve().parents[1]
PROBE_DB = ROOT / "validation/measured/llama.cpp/hardware"


def _cpu(cpu_id: str):
    return hwdb.load().items[cpu_id]


def test_ops_per_cycle_by_pipes():
    # Zen 4: 2 FMA pipes of 256 bits. fp32: 2 x 256 / 32 lanes x 2 FLOP = 32 per cycle, the same for AVX-512
    # (two halves); VNNI int8: 4 products per 32-bit lane = 128; AVX-512 BF16: 2 per lane = 64.
    p = isa.PATHS
    assert isa.ops_per_cycle(p["avx512-fp32"], 2, 256) == 32
    assert isa.ops_per_cycle(p["avx512-vnni-int8"], 2, 256) == 128
    assert isa.ops_per_cycle(p["avx512-bf16"], 2, 256) == 64
    # Skylake-SP Gold: 2 x 512-bit FMA: 64 fp32; int8 without VNNI (3 instructions per 4 products): 64 x 4/3
    assert isa.ops_per_cycle(p["avx512-fp32"], 2, 512) == 64
    assert isa.ops_per_cycle(p["avx512-int8"], 2, 512) == pytest.approx(256 / 3)
    # AVX2 on 512-bit pipes stays 256 bits wide: 2 x 256 / 32 x 2 = 32
    assert isa.ops_per_cycle(p["avx2-fp32"], 2, 512) == 32
    # AMX: the TMUL's fixed rate per core
    assert isa.ops_per_cycle(p["amx-int8"], 2, 512) == 2048


def test_probe_clock_prices_the_other_paths_within_the_measured_peaks():
    # The probe of the campaign machine (2 Zen 4 cores) measured fp32 191.5, bf16 426.1 and int8 783.9 G(FL)OP/s
    # (validation/measured/llama.cpp/hardware/cpus/epyc-genoa-2t.yaml). Its fp32 implies 191.5e9 / (2 x 32) =
    # 2.99 GHz; at that clock VNNI int8 is 2 x 2.99e9 x 128 = 766 GOP/s (measured 784, 2.3% more) and
    # AVX-512 BF16 is 383 GFLOP/s (measured 426: the bf16 run met a higher boost clock, 11% more).
    db = hwdb.load(PROBE_DB)
    paths = cpu_paths(db.items["epyc-genoa-2t"])
    assert paths["avx512-fp32"] == pytest.approx(191.5e9)
    assert paths["avx512-vnni-int8"] == pytest.approx(191.5e9 * 4)
    own = db.items["epyc-genoa-2t"].peak_flop_per_s
    assert paths["avx512-vnni-int8"] / own["int8"].value == pytest.approx(0.977, abs=0.005)
    assert paths["avx512-bf16"] / own["bf16"].value == pytest.approx(0.899, abs=0.005)


def _clock(cpu) -> float:
    return (cpu.all_core_clock_hz or cpu.base_clock_hz).value


@pytest.mark.parametrize("cpu_id, path, per_cycle", [
    # mainline llama.cpp's quantised dot products are 256-bit code (arch/x86/quants.c, __m256i), so:
    # Skylake-SP: AVX-512 without VNNI: AVX2 maddubs, 3 instructions, 256 bits on 2 pipes: 2 x 8 x 2 x 4/3 per core
    ("xeon-gold-6138", "avx2-int8", 32 * 4 / 3),
    # Zen 3 (Milan-X): AVX2 only, 2 x 256-bit pipes: 32 x 4/3 per core
    ("epyc-7773x", "avx2-int8", 32 * 4 / 3),
    # Zen 4 (Genoa): vpdpbusd on ymm (AVX512VL) on 2 x 256-bit pipes: 32 x 4 per core, as a 512-bit one would
    ("epyc-9654", "avx512-vnni-256-int8", 32 * 4),
    # Sapphire Rapids: no AMX kernel for routed experts (MUL_MAT_ID), and 256-bit VNNI on its 2 x 512-bit pipes
    # runs at half their width: 2 x 8 x 2 x 4 = 32 x 4 per core, half the avx512-vnni-int8 path's 64 x 4
    ("xeon-platinum-8480-plus", "avx512-vnni-256-int8", 32 * 4),
])
def test_llama_cpp_int8_path_per_cpu(cpu_id, path, per_cycle):
    cpu = _cpu(cpu_id)
    paths = cpu_paths(cpu)
    peaks, names = isa.engine_peaks(paths, {}, engines.load("llama.cpp").cpu_kernels)
    assert names["int8"] == path
    assert peaks["int8"] == pytest.approx(cpu.cores.value * _clock(cpu) * per_cycle)


def test_ik_llama_cpp_needs_vnni_for_its_512_bit_kernels():
    # ik_llama.cpp's iqk GEMMs are 512-bit only under HAVE_FANCY_SIMD (AVX512F+VNNI+VL+BW+DQ), else AVX2:
    # a Gold 6138 (AVX-512, no VNNI) runs them at 2 x 8 x 2 x 4/3 per core; a Genoa at the 512-bit VNNI path
    ik = engines.load("ik-llama.cpp").cpu_kernels
    for cpu_id, path, per_cycle in (("xeon-gold-6138", "avx2-int8", 32 * 4 / 3),
                                    ("xeon-platinum-8480-plus", "avx512-vnni-int8", 64 * 4)):
        cpu = _cpu(cpu_id)
        peaks, names = isa.engine_peaks(cpu_paths(cpu), {}, ik)
        assert names["int8"] == path
        assert peaks["int8"] == pytest.approx(cpu.cores.value * _clock(cpu) * per_cycle)


def test_an_engine_without_kernels_takes_the_fastest_path():
    # the ideal roofline on a Sapphire Rapids Xeon: AMX int8, 2,048 ops per cycle per core
    cpu = _cpu("xeon-platinum-8480-plus")
    _, names = isa.engine_peaks(cpu_paths(cpu), {}, engines.load("roofline").cpu_kernels)
    assert names["int8"] == "amx-int8" and names["bf16"] == "amx-bf16"


@pytest.mark.parametrize("hardware, path", [("xeon-gold-6138", "avx2-int8"), ("epyc-7773x", "avx2-int8")])
def test_predict_names_the_isa_path(hardware, path):
    from capsim.predict import Query, predict

    rep = predict(Query(model="mixtral-8x7b", hardware=hardware, engine="llama.cpp", precision="q4_k_m",
                        check_memory=False), hwdb.load())
    assert rep["scenario"]["kernel_path"] == path
    from capsim.cli.predict import human

    assert f"on the {path} ISA path" in human(rep)


def test_a_gpu_has_no_isa_path():
    t = resolve_target(hwdb.load(), "h100")
    assert t.cpu_paths == {}


@pytest.mark.parametrize("raw, field", [
    ({"int8": ["avx512-fp32"], "source": "x"}, "cpu_kernels.int8"),  # an fp32 path in the int8 list
    ({"int8": ["no-such-path"], "source": "x"}, "cpu_kernels.int8"),
    ({"int4": ["avx2-int8"], "source": "x"}, "cpu_kernels.int4"),
    ({"int8": ["avx2-int8"]}, "cpu_kernels.source"),
    ({"attention": "fp64", "source": "x"}, "cpu_kernels.attention"),
])
def test_bad_cpu_kernels_name_the_field(raw, field):
    with pytest.raises(CapsimError, match=field.replace(".", r"\.")):
        parse(raw, Path("x.yaml"))
