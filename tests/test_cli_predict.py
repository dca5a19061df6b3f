"""`capsim predict` and `capsim model`: JSON and human output, defaults, and one-line errors (exit code 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from capsim.cli.main import cli
from capsim.model.catalogue import CATALOGUE

REPO = Path(__file__).resolve().parents[1]
CONFIGS = CATALOGUE / "configs"
MIXTRAL_CONFIG = CONFIGS / "mistralai__Mixtral-8x7B-v0.1.json"
LLAMA_CONFIG = CONFIGS / "meta-llama__Llama-3.1-8B.json"

REPORT_KEYS = {
    "ttft_s", "tpot_s", "prefill_tokens_per_s", "decode_tokens_per_s", "decode_tokens_per_s_per_user",
    "s_mbu", "s_mfu", "mbu", "mfu", "activated_experts_per_layer", "memory_bytes", "fits", "bottleneck",
    "cost_usd_per_million_tokens", "scenario",
}
SCENARIO_KEYS = {
    "model", "hardware", "devices", "engine", "precision", "kv_precision", "compute_dtype", "batch",
    "input_len", "output_len", "tp", "ep",
}


def run(*args):
    return CliRunner().invoke(cli, list(args))


def predict_json(*args) -> dict:
    r = run("predict", *args, "--json")
    assert r.exit_code == 0, r.output + r.stderr
    return json.loads(r.stdout, parse_constant=_no_nan)


def _no_nan(name):
    raise AssertionError(f"--json output holds {name}, which is not JSON")


def one_line_error(result, *needles) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr
    assert "Traceback" not in result.output + err
    assert err.startswith("capsim: error: "), err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert result.stdout == ""
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def write(tmp_path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def mixtral_config(**changes) -> dict:
    cfg = json.loads(MIXTRAL_CONFIG.read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


# ---------------------------------------------------------------------------------------- output

def test_json_report_has_every_key_and_the_resolved_scenario():
    rep = predict_json("-m", "mixtral", "-H", "dgx-h100", "--batch", "16")
    assert REPORT_KEYS <= rep.keys(), REPORT_KEYS - rep.keys()
    sc = rep["scenario"]
    assert SCENARIO_KEYS <= sc.keys(), SCENARIO_KEYS - sc.keys()
    assert sc["model"] == "mistralai/Mixtral-8x7B-v0.1"
    assert sc["hardware"] == "dgx-h100" and sc["devices"] == 8
    assert sc["engine"] == "vllm"  # the default: a forecast of a deployed engine, the ideal bound beside it
    assert rep["ideal_bound"]["engine"] == "roofline" and rep["ideal_bound"]["tpot_s"] <= rep["tpot_s"]
    assert (sc["precision"], sc["kv_precision"], sc["compute_dtype"]) == ("bf16", "bf16", "bf16")
    assert (sc["batch"], sc["input_len"], sc["output_len"], sc["tp"], sc["ep"]) == (16, 512, 128, 8, 1)
    assert rep["decode_tokens_per_s"] == pytest.approx(16 * rep["decode_tokens_per_s_per_user"], rel=1e-12)
    assert rep["decode_tokens_per_s_per_user"] == pytest.approx(1 / rep["tpot_s"], rel=1e-12)
    assert rep["prefill_tokens_per_s"] == pytest.approx(16 * 512 / rep["ttft_s"], rel=1e-12)
    assert rep["fits"] is True
    assert 2.0 <= rep["activated_experts_per_layer"] <= 8.0
    assert 0 < rep["s_mbu"] <= 1 and 0 < rep["s_mfu"] <= 1


def test_defaults_print_a_human_table():
    r = run("predict", "-m", "mixtral", "-H", "dgx-h100")
    assert r.exit_code == 0, r.output + r.stderr
    out = r.stdout
    assert "TTFT" in out and "TPOT" in out
    assert "S-MBU" in out and "S-MFU" in out
    bound = [line for line in out.splitlines() if line.startswith("Decode is ") and "-bound" in line]
    assert len(bound) == 1, out
    assert "input 512" in out and "output 128" in out and "batch 1" in out


def test_dense_reference_model_is_predicted():
    rep = predict_json("-m", "llama-3.1-8b", "-H", "h100")
    assert rep["scenario"]["model"] == "meta-llama/Llama-3.1-8B"
    assert rep["activated_experts_per_layer"] == 0
    assert rep["s_mbu"] == pytest.approx(rep["mbu"]) and rep["s_mfu"] == pytest.approx(rep["mfu"])


def test_local_config_path_predicts_like_the_catalogue_entry(monkeypatch):
    monkeypatch.chdir(REPO)
    path = "capsim/catalogue/configs/mistralai__Mixtral-8x7B-v0.1.json"
    local = predict_json("-m", path, "-H", "dgx-h100")
    catalogue = predict_json("-m", "mixtral", "-H", "dgx-h100")
    assert local["tpot_s"] == catalogue["tpot_s"]
    assert local["ttft_s"] == catalogue["ttft_s"]
    assert local["scenario"]["model"] == path


def test_dense_local_config_needs_allow_dense(tmp_path):
    """A local dense config is refused without --allow-dense (the catalogue's dense Llama is always allowed)."""
    p = write(tmp_path, "config.json", LLAMA_CONFIG.read_text())
    one_line_error(run("predict", "-m", str(p), "-H", "h100"), str(p), "not a MoE config", "--allow-dense")
    rep = predict_json("-m", str(p), "-H", "h100", "--allow-dense")
    ref = predict_json("-m", "llama-3.1-8b", "-H", "h100")
    assert rep["tpot_s"] == ref["tpot_s"] and rep["ttft_s"] == ref["ttft_s"]
    folder = predict_json("-m", str(tmp_path), "-H", "h100", "--allow-dense")  # a checkpoint folder
    assert folder["tpot_s"] == ref["tpot_s"]


# ---------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("args, needles", [
    (["-m", "mixtrall", "-H", "dgx-h100"], ["--model", "mixtrall", "did you mean", "mixtral"]),
    (["-m", "mixtral", "-H", "h10x"], ["--hardware", "h10x", "did you mean", "h100"]),
    (["-m", "mixtral", "-H", "dgx-h100", "--batch", "0"], ["--batch 0"]),
    (["-m", "mixtral", "-H", "dgx-h100", "--input-len", "-5"], ["--input-len -5"]),
    (["-m", "mixtral", "-H", "dgx-h100", "--output-len", "-1"], ["--output-len -1"]),
    (["-m", "mixtral", "-H", "h100", "--precision", "nvfp4"], ["--precision", "nvfp4", "h100-sxm5-80gb"]),
    (["-m", "mixtral", "-H", "a100-80gb", "--compute-dtype", "fp8"], ["--compute-dtype", "fp8", "a100-sxm4-80gb"]),
    (["-m", "mixtral", "-H", "dgx-h100", "--precision", "fp7"], ["--precision", "fp7", "unknown precision"]),
    (["-m", "mixtral", "-H", "dgx-h100", "--kv-precision", "fp4"], ["--kv-precision", "fp4"]),
    (["-m", "mixtral", "-H", "dgx-h100", "--engine", "vllm-nope"], ["--engine", "vllm-nope", "roofline"]),
    (["-m", "mixtral", "-H", "dgx-h100", "--tp", "3"], ["--tp 3", "8 devices"]),
    (["-m", "mixtral", "-H", "dgx-h100", "--ep", "3"], ["--ep 3"]),
    (["-m", "mixtral", "-H", "dgx-h100", "--devices", "0"], ["--devices 0"]),
    (["-m", "qwen", "-H", "h100"], ["--model", "ambiguous", "Qwen/Qwen3-30B-A3B"]),
    (["-m", "deepseek-v3", "-H", "h100"], ["DeepSeek-V3", "h100-sxm5-80gb", "would fit with", "--devices"]),
])
def test_bad_input_is_one_line_naming_the_flag(args, needles):
    one_line_error(run("predict", *args), *needles)


def test_config_missing_hidden_size_names_field_and_file(tmp_path):
    p = write(tmp_path, "no_hidden.json", json.dumps(mixtral_config(hidden_size=None)))
    one_line_error(run("predict", "-m", str(p), "-H", "h100"), "hidden_size", "no_hidden.json")


def test_config_that_is_not_a_model_names_field_and_file(tmp_path):
    """Neither MoE nor a transformer (no hidden size, layers, heads): an error, not a dense model."""
    p = write(tmp_path, "bert_like.json", json.dumps({"model_type": "resnet", "num_channels": 3}))
    one_line_error(run("predict", "-m", str(p), "-H", "h100"), "hidden_size", "bert_like.json")


def test_config_not_an_object_names_file(tmp_path):
    p = write(tmp_path, "list.json", "[1, 2, 3]")
    one_line_error(run("predict", "-m", str(p), "-H", "h100"), "list.json", "JSON object")


def test_config_not_json_names_file(tmp_path):
    p = write(tmp_path, "broken.json", "{not json")
    one_line_error(run("predict", "-m", str(p), "-H", "h100"), "broken.json", "JSON")


def test_missing_config_path_and_empty_folder(tmp_path):
    one_line_error(run("predict", "-m", str(tmp_path / "nope.json"), "-H", "h100"), "--model", "nope.json")
    one_line_error(run("predict", "-m", str(tmp_path), "-H", "h100"), "--model", "no config.json")


def test_moe_config_missing_top_k_is_an_error(tmp_path):
    p = write(tmp_path, "no_topk.json", json.dumps(mixtral_config(num_experts_per_tok=None)))
    one_line_error(run("predict", "-m", str(p), "-H", "dgx-h100"), "num_experts_per_tok", "no_topk.json")


def test_dense_config_missing_intermediate_size_is_an_error(tmp_path):
    cfg = json.loads(LLAMA_CONFIG.read_text())
    del cfg["intermediate_size"]
    p = write(tmp_path, "no_ffn.json", json.dumps(cfg))
    one_line_error(run("predict", "-m", str(p), "-H", "h100", "--allow-dense"), "intermediate_size", "no_ffn.json")


@pytest.mark.parametrize("field, value", [("hidden_size", "4k"), ("num_attention_heads", 0),
                                          ("hidden_size", -4096), ("num_hidden_layers", 0),
                                          ("num_experts_per_tok", 9)])
def test_config_with_unusable_value_is_a_one_line_error(tmp_path, field, value):
    p = write(tmp_path, "bad_value.json", json.dumps(mixtral_config(**{field: value})))
    needle = "top-k" if field == "num_experts_per_tok" else field
    one_line_error(run("predict", "-m", str(p), "-H", "dgx-h100"), needle, "bad_value.json")


def test_error_end_to_end_in_a_real_process(tmp_path):
    """The installed entry point: exit code 2, one stderr line, no traceback, nothing on stdout."""
    for args, needles in (
        (["-m", "mixtrall", "-H", "dgx-h100"], ["--model", "mixtral"]),
        (["-m", str(write(tmp_path, "broken.json", "{")), "-H", "h100"], ["broken.json"]),
    ):
        p = subprocess.run([sys.executable, "-m", "capsim.cli.main", "predict", *args],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr + p.stdout
        assert p.stdout == ""
        assert p.stderr.count("\n") == 1 and p.stderr.startswith("capsim: error: ")
        for needle in needles:
            assert needle in p.stderr


# ---------------------------------------------------------------------------------------- capsim model

def test_model_list_has_the_catalogue():
    r = run("model", "list")
    assert r.exit_code == 0, r.output
    ids = [m["id"] for m in json.loads(run("model", "list", "--json").stdout)]
    assert f"{len(ids)} models" in r.stdout and len(ids) >= 30  # issue 24: at least 30 models
    assert "Qwen/Qwen3-30B-A3B" in ids and "allenai/OLMoE-1B-7B-0924" in ids


def test_model_show_resolves_alias_of_same_shape():
    r = run("model", "show", "deepseek-r1")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].startswith("deepseek-ai/DeepSeek-V3 ")
    data = json.loads(run("model", "show", "deepseek-r1", "--json").stdout)
    assert data["id"] == "deepseek-ai/DeepSeek-V3"


def test_model_show_committed_config_path(monkeypatch):
    monkeypatch.chdir(REPO)
    path = "capsim/catalogue/configs/allenai__OLMoE-1B-7B-0924.json"
    r = run("model", "show", path)
    assert r.exit_code == 0, r.output
    assert path in r.stdout and "64 routed experts, top-8" in r.stdout
    data = json.loads(run("model", "show", path, "--json").stdout)
    ref = json.loads(run("model", "show", "olmoe", "--json").stdout)
    assert data["total_params"] == ref["total_params"] and data["active_params"] == ref["active_params"]


def test_model_show_unknown_is_one_line():
    one_line_error(run("model", "show", "mixtrall"), "mixtral")


@pytest.mark.parametrize("command", ["predict", "provision", "sweep"])
def test_help_lists_every_engine_and_weight_format(command):
    """--help names the accepted values, read from the shipped profiles and the precision table (so a new
    profile appears without a code change); click wraps lines, so compare with whitespace folded."""
    import re

    from capsim import engines, precision

    r = CliRunner().invoke(cli, [command, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    for name in [*engines.available(), *precision.PRECISIONS, *precision.ALIASES]:
        assert re.search(rf"[ (]{re.escape(name)}[ ,.)]", text), name
    assert "awq" in text and "trt-llm" in text


def test_completion_offers_engines_hardware_and_models():
    """Shell completion (click's) offers the names that start with what was typed."""
    import os

    env = {**os.environ, "_CAPSIM_COMPLETE": "bash_complete", "COMP_WORDS": "capsim predict --engine tr",
           "COMP_CWORD": "3"}
    out = subprocess.run([sys.executable, "-m", "capsim"], env=env, capture_output=True, text=True, timeout=120)
    assert "trt-llm" in out.stdout, out.stdout + out.stderr
    env["COMP_WORDS"], env["COMP_CWORD"] = "capsim predict -H dgx-h", "3"
    out = subprocess.run([sys.executable, "-m", "capsim"], env=env, capture_output=True, text=True, timeout=120)
    assert "dgx-h100" in out.stdout, out.stdout + out.stderr
