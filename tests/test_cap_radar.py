"""The CAP radar diagram: MoE-CAP's normalisation and classes (exact values derived by hand), and the
``capsim cap radar`` command end to end (PNG + SVG + JSON) with its one-line errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from capsim.cap import radar
from capsim.cap import radar_systems as rs
from capsim.cli.main import cli
from capsim.errors import CapsimError

REL = 1e-12

# MoE-CAP's public radar example for Qwen3-30B-A3B, quoted in ../shared/reference/moecap_metrics.md
# ("CAP radar diagram", from the MoE-CAP repository): SGLang, K-Transformers, MoE-Infinity.
TPOT_S = [0.058, 0.073, 0.15]
CAPEX_USD = [8920.0, 3800.0, 3800.0]
ACCURACY = [0.911, 0.800, 0.911]


def test_reference_example_scores_and_classes():
    # performance (TPOT, lower is better), min 0.058, max 0.15:
    #   SGLang 100; KT 20 + 80 x (0.15 - 0.073) / (0.15 - 0.058) = 20 + 80 x 0.077 / 0.092 = 86.9565...;
    #   MoE-Infinity 20.
    # cost: largest capex 8,920 -> tick_max 10,000 (1-2-5 series):
    #   SGLang 20 + 80 x (1 - 0.892) = 28.64; KT and MoE-Infinity 20 + 80 x (1 - 0.38) = 20 + 80 x 0.62 = 69.6.
    # accuracy from min 0.800 to 1.0: SGLang and MoE-Infinity 20 + 80 x 0.111 / 0.2 = 64.4; KT 20.
    # classes (two highest axes): SGLang P 100, A 64.4 -> performance-accuracy; KT P 86.96, C 69.6 ->
    #   performance-cost; MoE-Infinity C 69.6, A 64.4 -> cost-accuracy.
    scores, basis = radar.radar(TPOT_S, CAPEX_USD, ACCURACY, "tpot")
    sglang, kt, moe_inf = scores
    assert sglang.performance == pytest.approx(100.0, rel=REL)
    assert kt.performance == pytest.approx(20 + 80 * 0.077 / 0.092, rel=REL)
    assert kt.performance == pytest.approx(86.95652173913044, rel=REL)
    assert moe_inf.performance == pytest.approx(20.0, rel=REL)
    assert basis["cost_tick_max_usd"] == 10_000.0
    assert sglang.cost == pytest.approx(28.64, rel=REL)
    assert kt.cost == pytest.approx(69.6, rel=REL) and moe_inf.cost == pytest.approx(69.6, rel=REL)
    assert sglang.accuracy == pytest.approx(64.4, rel=REL) and moe_inf.accuracy == pytest.approx(64.4, rel=REL)
    assert kt.accuracy == pytest.approx(20.0, rel=REL)
    assert [s.cap_class for s in scores] == ["performance-accuracy", "performance-cost", "cost-accuracy"]
    assert basis["accuracy_min"] == 0.8 and basis["performance_min"] == 0.058 and basis["performance_max"] == 0.15


@pytest.mark.parametrize("x, tick", [(3800, 5000), (8920, 10_000), (10_000, 10_000), (0.3, 0.5), (1, 1),
                                     (1.0000001, 2), (2, 2), (2.5, 5), (49_750, 50_000), (50_001, 100_000),
                                     (0.001, 0.001), (0.0011, 0.002), (199_000, 200_000)])
def test_tick_max_is_the_next_1_2_5_value(x, tick):
    assert radar.tick_max(x) == tick


def test_tick_max_rejects_non_positive():
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(CapsimError):
            radar.tick_max(bad)


def test_throughput_is_higher_is_better():
    # tokens/s 10, 30, 50: min-max with the fastest at 100: 20, 20 + 80 x 20/40 = 60, 100
    assert radar.performance_scores([10, 30, 50], "throughput") == pytest.approx([20, 60, 100], rel=REL)
    # the same systems by TPOT (1/10, 1/30, 1/50 s): the lowest TPOT scores 100
    tpot = radar.performance_scores([1 / 10, 1 / 30, 1 / 50], "tpot")
    assert tpot[2] == 100.0 and tpot[0] == pytest.approx(20, rel=REL)
    with pytest.raises(CapsimError):
        radar.performance_scores([1, 2], "latency")


def test_all_equal_and_ties():
    assert radar.performance_scores([0.05, 0.05], "tpot") == [100.0, 100.0]
    assert radar.performance_scores([7.0, 7.0, 7.0], "throughput") == [100.0] * 3
    assert radar.accuracy_scores([1.0, 1.0]) == [100.0, 100.0]
    assert radar.accuracy_scores([0.9, 0.9]) == [20.0, 20.0]  # (a - min) / (1 - min) = 0: both at the floor
    # cost: equal costs score alike; a cost that is itself a 1-2-5 value scores exactly 20
    assert radar.cost_scores([5000, 5000]) == ([20.0, 20.0], 5000.0)
    # ties broken in the order performance, cost, accuracy
    assert radar.classify(50, 50, 50) == "performance-cost"
    assert radar.classify(40, 60, 60) == "cost-accuracy"
    assert radar.classify(60, 40, 60) == "performance-accuracy"
    assert radar.classify(60, 60, 40) == "performance-cost"
    assert radar.classify(20, 100, 100) == "cost-accuracy"


def test_bad_values_are_one_line_errors():
    with pytest.raises(CapsimError, match="fraction"):
        radar.accuracy_scores([0.5, 91.1])
    with pytest.raises(CapsimError, match="positive"):
        radar.cost_scores([0, 100])
    with pytest.raises(CapsimError, match="one value per system"):
        radar.radar([1, 2], [1, 2], [0.5], "tpot")


# ------------------------------------------------------------------ the command

# Qwen1.5-MoE-A2.7B has a published GSM8K score (capsim/catalogue/accuracy.yaml: 61.5%, qwen-moe-blog); the
# RTX 4090 and the EPYC 9654 server are priced in hardware_db.
SYSTEMS_YAML = """\
benchmark: GSM8K
defaults: {model: qwen1.5-moe, batch: 1, input_len: 128, output_len: 32}
systems:
  - {name: two 4090s, hardware: rtx-4090, devices: 2, engine: trt-llm}
  - {name: EPYC server, hardware: cpu-server-epyc-9654, devices: 1, engine: llama.cpp}
  - name: stated
    hardware: rtx-4090
    devices: 2
    engine: trt-llm
    capex_usd: {value: 4000, source: a quote}
    accuracy: {value: 0.7, source: a paper}
"""


def _run(args, tmp_path, text=SYSTEMS_YAML):
    path = tmp_path / "systems.yaml"
    path.write_text(text, encoding="utf-8")
    return CliRunner().invoke(cli, ["cap", "radar", str(path), "--out", str(tmp_path / "radar"), *args])


def _one_line_error(res):
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capsim: error: ") and "Traceback" not in res.output
    return lines[0]


def test_cli_writes_png_and_svg_and_json(tmp_path):
    res = _run(["--json"], tmp_path)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out) == {"benchmark", "performance_metric", "normalisation", "systems", "files"}
    assert out["files"] == [str(tmp_path / "radar.png"), str(tmp_path / "radar.svg")]
    assert (tmp_path / "radar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "radar.svg").read_text(encoding="utf-8")[:2000]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    a, b, c = out["systems"]
    for row in out["systems"]:
        assert {"name", "class", "scores", "tpot_s", "decode_tokens_per_s", "capex_usd", "accuracy",
                "accuracy_source", "scenario"} <= set(row)
        assert set(row["scores"]) == {"performance", "cost", "accuracy"}
        assert row["class"] in radar.CLASSES.values()
    assert a["capex_usd"] == pytest.approx(2 * 1599.0)  # hardware_db rtx-4090: $1,599 launch MSRP
    assert b["capex_usd"] == pytest.approx(27_690.0 / 2)  # the server's parts, 1 of 2 sockets
    assert (c["capex_usd"], c["capex_source"], c["accuracy"], c["accuracy_source"]) == (4000, "a quote", 0.7, "a paper")
    assert a["accuracy"] == 0.615 and a["accuracy_source"] == "qwen-moe-blog"
    assert out["normalisation"]["cost_tick_max_usd"] == 20_000 and out["normalisation"]["accuracy_min"] == 0.615
    assert a["scores"]["cost"] == pytest.approx(20 + 80 * (1 - 3198 / 20_000))
    assert a["tpot_s"] == c["tpot_s"]  # same scenario: same prediction


def test_cli_table_throughput_and_system_flags(tmp_path):
    res = CliRunner().invoke(cli, [
        "cap", "radar", "-b", "gsm8k", "--performance", "throughput", "--out", str(tmp_path / "r"),
        "--system", "name=A,model=qwen1.5-moe,hardware=rtx-4090,devices=2,engine=trt-llm,batch=4",
        "--system", "name=B,model=qwen1.5-moe,hardware=cpu-server-epyc-9654,engine=llama.cpp"])
    assert res.exit_code == 0, res.output
    assert "tokens/s" in res.output and "qwen-moe-blog" in res.output and "performance-" in res.output
    assert (tmp_path / "r.png").exists() and (tmp_path / "r.svg").exists()


def test_unknown_key_names_the_file_and_the_key(tmp_path):
    line = _one_line_error(_run([], tmp_path, SYSTEMS_YAML.replace("engine: trt-llm", "engin: trt-llm")))
    assert "systems.yaml: systems[0]" in line and "'engin'" in line and "did you mean engine?" in line
    assert "allowed keys: name, model, hardware" in line
    line = _one_line_error(_run([], tmp_path, "benchmrk: gsm8k\n" + SYSTEMS_YAML))
    assert "'benchmrk'" in line and "did you mean benchmark?" in line
    res = CliRunner().invoke(cli, ["cap", "radar", "--out", str(tmp_path / "r"),
                                   "--system", "model=qwen1.5-moe,hardware=rtx-4090,gpus=2",
                                   "--system", "model=qwen1.5-moe,hardware=rtx-4090"])
    line = _one_line_error(res)
    assert "--system" in line and "'gpus'" in line


def test_a_single_system_is_an_error(tmp_path):
    one = "benchmark: gsm8k\nsystems:\n  - {model: qwen1.5-moe, hardware: rtx-4090, devices: 2}\n"
    line = _one_line_error(_run([], tmp_path, one))
    assert "at least 2 systems" in line
    assert not (tmp_path / "radar.png").exists()


def test_no_published_score_is_an_error(tmp_path):
    text = SYSTEMS_YAML.replace("model: qwen1.5-moe", "model: qwen3-30b-a3b").replace(
        "input_len: 128", "input_len: 128, precision: int4")
    line = _one_line_error(_run([], tmp_path, text))
    assert "no published score" in line and "Qwen/Qwen3-30B-A3B" in line and "GSM8K" in line and "int4" in line
    assert "systems[0]" in line and "(two 4090s)" in line and "accuracy:" in line


def test_unpriced_hardware_without_capex_is_an_error(tmp_path):
    text = SYSTEMS_YAML.replace("{name: two 4090s, hardware: rtx-4090, devices: 2, engine: trt-llm}",
                                "{name: H100, hardware: dgx-h100, devices: 1, engine: trt-llm}")
    line = _one_line_error(_run([], tmp_path, text))
    assert "(H100)" in line and "no price for" in line and "capex_usd" in line and "--price NAME=USD" in line


def test_flag_parsing_and_validation():
    s = rs.parse_flag("name=x,model=m,hardware=h,devices=4,capex_usd=$1200,accuracy=0.5,accuracy_source=p,"
                      "price.dram=170", 1)
    assert (s.devices, s.capex_usd, s.accuracy, s.accuracy_source, s.prices) == (4, 1200.0, 0.5, "p", {"dram": 170.0})
    with pytest.raises(CapsimError, match="without its source"):
        rs.parse_flag("model=m,hardware=h,accuracy=0.5", 1)
    with pytest.raises(CapsimError, match="fraction"):
        rs.parse_flag("model=m,hardware=h,accuracy=91.1,accuracy_source=p", 1)
    with pytest.raises(CapsimError, match="integer"):
        rs.parse_flag("model=m,hardware=h,devices=two", 1)
    with pytest.raises(CapsimError, match="missing hardware"):
        rs.parse_flag("model=m", 1)
    with pytest.raises(CapsimError, match="own name"):
        rs.check_systems([rs.parse_flag("model=m,hardware=h", 1), rs.parse_flag("model=m,hardware=h", 2)])


def test_out_folder_is_checked_before_any_work(tmp_path):
    line = _one_line_error(CliRunner().invoke(cli, [
        "cap", "radar", "--out", str(tmp_path / "nowhere" / "radar"),
        "--system", "model=qwen1.5-moe,hardware=rtx-4090,name=a", "--system", "model=qwen1.5-moe,hardware=rtx-4090"]))
    assert "--out" in line and "no folder" in line
    line = _one_line_error(CliRunner().invoke(cli, ["cap", "radar"]))
    assert "no systems" in line
