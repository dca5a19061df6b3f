"""validation/measured/vllm-cpu/: the committed vLLM CPU run files are well-formed (no vLLM needed here)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

import capsim
from capsim.measure import vllm_cpu
from capsim.model.spec import spec_from_config

REPO = Path(__file__).resolve().parents[1]
RUNS_DIR = REPO / "validation" / "measured" / "vllm-cpu"
RUNS = sorted(RUNS_DIR.glob("*.json"))
TIME_KEYS = ("e2e_s", "ttft_median_s", "ttft_max_s", "ttft_min_s", "prefill_phase_s", "engine_s",
             "tpot_median_s", "tpot_max_s", "decode_phase_s", "output_tok_per_s")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_run_files_exist():
    assert len(RUNS) >= 3, "expected at least three measured shapes"
    assert (RUNS_DIR / "README.md").is_file()


@pytest.mark.parametrize("path", RUNS, ids=lambda p: p.stem)
def test_header(path):
    run = load(path)
    assert run["format"] == "capsim-vllm-cpu-run" and run["version"] == 1
    assert run["engine"] == "vllm" and run["shape"] == path.stem
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", run["date"])
    assert "capsim/measure/vllm_cpu.py" in run["command"]
    versions = run["versions"]
    for key in ("vllm", "torch", "transformers", "python"):
        assert isinstance(versions[key], str) and versions[key]
    m = run["machine"]
    assert m["cpu_model"] and m["arch"] and positive(m["logical_cpus"]) and positive(m["memory_gib"])
    assert {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"} <= set(m["isa"])
    assert all(isinstance(v, bool) for v in m["isa"].values())
    assert isinstance(run["threads"], dict) and run["threads"]
    for key in ("loadavg_before", "loadavg_after"):
        assert len(run[key]) == 3 and all(isinstance(x, (int, float)) and x >= 0 for x in run[key])


@pytest.mark.parametrize("path", RUNS, ids=lambda p: p.stem)
def test_points(path):
    run = load(path)
    points = run["points"]
    assert points, "no measured points"
    seen = set()
    for pt in points:
        key = (pt["batch"], pt["prompt_len"])
        assert key not in seen, f"duplicate point {key}"
        seen.add(key)
        assert all(positive(pt[k]) for k in ("batch", "prompt_len", "output_len", "repeats"))
        assert pt["output_len"] == run["sampling"]["max_tokens"]
        for k in TIME_KEYS:
            if k in pt:
                assert positive(pt[k]), f"{key} {k}={pt[k]!r}"
        assert len(pt["e2e_samples_s"]) == pt["repeats"] and all(positive(x) for x in pt["e2e_samples_s"])
        assert min(pt["e2e_samples_s"]) <= pt["e2e_s"] <= max(pt["e2e_samples_s"])
        if "ttft_median_s" in pt:  # the first token comes before the whole call returns
            assert pt["ttft_min_s"] <= pt["ttft_median_s"] <= pt["ttft_max_s"] <= pt["e2e_s"]
        assert pt["output_tok_per_s"] == pytest.approx(pt["batch"] * pt["output_len"] / pt["e2e_s"])
    assert any(pt["batch"] == 1 for pt in points)


@pytest.mark.parametrize("path", RUNS, ids=lambda p: p.stem)
def test_config_prices_in_capsim(path):
    """The recorded config.json is one capsim reads, and it gives the parameter count torch counted."""
    run = load(path)
    spec = spec_from_config(run["config"], path.stem)
    assert spec.num_experts > 1 and spec.top_k >= 1
    assert spec.total_params == run["params"]


def test_runner_not_on_prediction_path():
    """Nothing in the capsim package imports the runner (it needs vLLM, capsim does not): `capsim measure
    --engine vllm` runs it as a script in vLLM's venv, by path; only the serving runner, itself a script run
    there, shares its model builder."""
    import re

    imports = re.compile(r"(from\s+capsim\.measure\s+import\s+[^\n]*vllm_cpu|import\s+capsim\.measure\.vllm_cpu|"
                         r"from\s+capsim\.measure\.vllm_cpu\s+import)")
    pkg = Path(capsim.__file__).parent
    for src in pkg.rglob("*.py"):
        if src not in (pkg / "measure" / "vllm_cpu.py", pkg / "measure" / "vllm_serve.py"):
            assert not imports.search(src.read_text(encoding="utf-8")), src


@pytest.mark.parametrize("name", sorted(vllm_cpu.SHAPES))
def test_runner_shapes_are_moe_configs(name):
    """The runner's shapes (importing it needs no vLLM) are MoE configs capsim reads."""
    spec = spec_from_config(vllm_cpu.shape_config(name), name)
    assert spec.num_experts >= 8 and 100e6 < spec.total_params < 1e9


def test_machine_facts():
    m = vllm_cpu.machine()
    assert m["logical_cpus"] >= 1 and m["memory_gib"] > 0 and isinstance(m["isa"], dict)
