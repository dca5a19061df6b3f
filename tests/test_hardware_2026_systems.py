"""The 2026 CPU and system entries: each CPU's stored peak is cores x clock x FLOP per cycle (and equals capsim's
ISA-path derivation), each system loads with its accelerator count, GB200 NVL72 is one NVLink domain of 72 GPUs,
and a DeepSeek-V3 expert-parallel forecast runs on it."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from capsim.cli.main import cli
from capsim.hardware import db as hwdb
from capsim.hardware.target import cpu_paths
from capsim.hardware.topology import build_graph, devices

DB, PROBLEMS = hwdb.check(hwdb.BUILTIN_DB)
GHZ = 1e9

# Each peak written out: cores x clock x operations per cycle per core.
#   AVX-512 fp32: 2 FMA units x 16 fp32 lanes x 2 FLOP = 64 FLOP/cycle (Intel: intel-ark-8480-plus "AVX-512 FMA
#     units 2", assumed for Granite Rapids; Zen 5: jiegec-zen5-uarch "2 条 AVX512 的浮点 FMA ... 64 FLOP per cycle")
#   AMX: 1,024 bf16 / 2,048 int8 operations per cycle per core (intel-amx-ops-per-cycle)
CPU_PEAKS = {
    # id: {dtype: (cores, GHz, ops per cycle per core)}  -- sources
    # xeon-6980p: 128 cores (nishikiout-xeon-6900p "128C/256T"), 3.2 GHz all-core boost (nishikiout-xeon-6900p)
    "xeon-6980p": {"fp32": (128, 3.2, 64), "bf16": (128, 3.2, 1024), "int8": (128, 3.2, 2048)},
    # xeon-6767p: 64 cores, 2.4 GHz base (hpe-dl380-gen12-cpu-list "Intel Xeon 6767P 2.4GHz 64-core 350W")
    "xeon-6767p": {"fp32": (64, 2.4, 64), "bf16": (64, 2.4, 1024), "int8": (64, 2.4, 2048)},
    # xeon-6960p: 72 cores, 2.7 GHz base (quattor-xeon-6960p "cores" = 72, "speed" = 2700)
    "xeon-6960p": {"fp32": (72, 2.7, 64), "bf16": (72, 2.7, 1024), "int8": (72, 2.7, 2048)},
    # epyc-9755: 128 Zen 5 cores, 2.7 GHz base (quattor-epyc-9755 "cores" = 128, "speed" = 2700)
    "epyc-9755": {"fp32": (128, 2.7, 64)},
    # epyc-9965: 192 Zen 5c cores, 2.25 GHz base (quattor-epyc-9965 "cores" = 192, "speed" = 2250)
    "epyc-9965": {"fp32": (192, 2.25, 64)},
    # epyc-9575f: 64 Zen 5 cores, 3.3 GHz base (quattor-epyc-9575f "cores" = 64, "speed" = 3300)
    "epyc-9575f": {"fp32": (64, 3.3, 64)},
}
PATH_OF = {"fp32": "avx512-fp32", "bf16": "amx-bf16", "int8": "amx-int8"}

NEW_FILES = ("cpus-systems-2026", "epyc-9755", "epyc-9965", "epyc-9575f", "xeon-6767p", "xeon-6960p", "xeon-6980p",
             "gb200-nvl72", "dgx-b300", "gh200-144gb-node")

# system id: (accelerator item, count); a system is checked only if present (it is removed when its accelerator
# item is missing)
SYSTEMS = {
    "gb200-nvl72": ("gb200", 72),
    "dgx-b300": ("b300", 8),
    "gh200-144gb-node": ("gh200-144gb", 1),
}


def test_new_files_load_without_problems():
    assert not [str(p) for p in PROBLEMS if any(f in str(p) for f in NEW_FILES)]


@pytest.mark.parametrize("cpu_id", sorted(CPU_PEAKS))
def test_cpu_peak_is_cores_times_clock_times_ops_per_cycle(cpu_id):
    cpu = DB.items[cpu_id]
    assert cpu.kind == "cpu"
    paths = cpu_paths(cpu)
    for dtype, (cores, ghz, per_cycle) in CPU_PEAKS[cpu_id].items():
        expected = cores * ghz * GHZ * per_cycle
        assert cpu.cores.value == cores
        assert math.isclose(cpu.peak_flop_per_s[dtype].value, expected, rel_tol=1e-9), dtype
        # the stored figure is the same as capsim's ISA path at the item's own clock
        assert math.isclose(paths[PATH_OF[dtype]], expected, rel_tol=1e-9), dtype


def test_6980p_peaks_at_the_all_core_boost():
    cpu = DB.items["xeon-6980p"]
    assert cpu.all_core_clock_hz.value == 3.2e9 and cpu.base_clock_hz.value == 2.0e9
    assert math.isclose(cpu.peak_flop_per_s["fp32"].value, 26.2144e12)   # 128 x 3.2 GHz x 64
    assert math.isclose(cpu.peak_flop_per_s["bf16"].value, 419.4304e12)  # 128 x 3.2 GHz x 1024
    assert math.isclose(cpu.peak_flop_per_s["int8"].value, 838.8608e12)  # 128 x 3.2 GHz x 2048


@pytest.mark.parametrize("sys_id", sorted(SYSTEMS))
def test_system_loads_with_its_accelerator_count(sys_id):
    if sys_id not in DB.items:
        pytest.skip(f"{sys_id} not in the database (its accelerator item is missing)")
    item, count = SYSTEMS[sys_id]
    g = build_graph(DB.items[sys_id], DB)
    gpus = devices(g, "accelerator")
    assert len(gpus) == count
    assert {g.nodes[d]["item"] for d in gpus} == {item}


def _nvlink_domains(g) -> list[set[str]]:
    """Accelerators that reach each other over NVLink edges only (through switches): the scale-up domains."""
    gpus = set(devices(g, "accelerator"))
    seen, out = set(), []
    for start in sorted(gpus):
        if start in seen:
            continue
        dom, todo = set(), [start]
        while todo:
            u = todo.pop()
            if u in dom:
                continue
            dom.add(u)
            todo += [v for v in g.successors(u) if g[u][v]["link"].startswith("nvlink-")
                     and g.nodes[v]["role"] in ("accelerator", "switch")]
        seen |= dom
        out.append(dom & gpus)
    return out


def test_gb200_nvl72_is_one_nvlink_domain_of_72_gpus_with_36_grace():
    if "gb200-nvl72" not in DB.items:
        pytest.skip("gb200-nvl72 not in the database")
    g = build_graph(DB.items["gb200-nvl72"], DB)
    assert [len(d) for d in _nvlink_domains(g)] == [72]
    assert len(devices(g, "cpu")) == 36
    assert all(g.nodes[c]["item"] == "grace-cpu" for c in devices(g, "cpu"))
    # every GPU has its own NVLink 5 bundle to the switch, and its superchip's Grace over NVLink-C2C (2 per Grace)
    assert all(g[f"gpu{i}"]["nvswitch0"]["link"] == "nvlink-5" for i in range(72))
    assert all(g[f"gpu{i}"][f"cpu{i // 2}"]["link"] == "nvlink-c2c" for i in range(72))


def test_deepseek_v3_expert_parallel_runs_on_gb200_nvl72():
    if "gb200-nvl72" not in DB.items:
        pytest.skip("gb200-nvl72 not in the database")
    # --ep 72 is refused (256 routed experts do not split over 72 ranks): 64 GPUs of the 72 is the closest layout
    r = CliRunner().invoke(cli, ["predict", "-m", "deepseek-v3", "-H", "gb200-nvl72", "--devices", "64", "--ep", "64",
                                 "--tp", "1", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["scenario"]["hardware"] == "gb200-nvl72"
    assert "nvlink-5" in out["scenario"]["collective_link"]
    assert out["tpot_s"] > 0 and math.isfinite(out["tpot_s"])
    refused = CliRunner().invoke(cli, ["predict", "-m", "deepseek-v3", "-H", "gb200-nvl72", "--devices", "72",
                                       "--ep", "72", "--tp", "1", "--json"])
    assert refused.exit_code == 2
