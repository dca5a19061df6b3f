"""`capsim measure`: run file keys and sanity on tiny random models, shape scaling per family, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import capsim
from capsim.errors import CapsimError
from capsim.measure.run_file import MEASUREMENT_KEYS, read_run, write_run
from capsim.measure.scaling import scale_config
from capsim.model.spec import spec_from_config
from capsim.traces.format import config_hash

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(capsim.__file__).parent / "catalogue" / "configs"
SHAPES = REPO / "validation" / "measured" / "shapes"
RUNS = REPO / "validation" / "measured" / "cpu"
TINY = dict(layers=2, hidden=64, vocab=256)


def catalogue(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def tiny(name: str, **extra) -> dict:
    cfg = scale_config(catalogue(name), **TINY, experts=8, intermediate=32)
    cfg.update(max_position_embeddings=512, **extra)
    return cfg


def check_run(run: dict, batches: list[int], prompt_lens: list[int], contexts: list[int]) -> None:
    assert run["format"] == "capsim-run" and run["version"] == 1
    assert run["engine"] == "hf-eager" and run["dtype"] == "float32"
    assert set(run["model"]) >= {"id", "config", "config_hash", "params"}
    assert run["model"]["config_hash"] == config_hash(run["model"]["config"])
    # the stored config is complete: the prediction side rebuilds the same model from it
    assert spec_from_config(run["model"]["config"]).total_params == run["model"]["params"]
    assert run["device"]["kind"] == "cpu" and run["device"]["threads"] >= 1 and run["device"]["name"]
    assert run["attn_implementation"] == "sdpa"
    prov = run["provenance"]
    assert set(prov) >= {"date", "command", "torch", "transformers", "numpy", "python", "platform"}
    assert prov["date"].endswith("+00:00") and isinstance(prov["command"], list)
    k, e = run["model"]["top_k"], run["model"]["num_experts"]
    moe_layers = sum(spec_from_config(run["model"]["config"]).moe_layers)
    for m in run["measurements"]:
        assert set(m) >= set(MEASUREMENT_KEYS)
        assert m["median_s"] > 0 and 0 < m["p10_s"] <= m["median_s"] <= m["p90_s"]
        assert len(m["samples_s"]) == m["repeats"] and all(s > 0 for s in m["samples_s"])
        assert len(m["activated_by_layer"]) == moe_layers
        assert all(k <= a <= e for a in m["activated_by_layer"])
        assert k <= m["activated_experts_per_layer"] <= e
        if m["phase"] == "decode" and m["batch"] == 1:
            assert m["activated_by_layer"] == [k] * moe_layers  # one token: exactly its top-k
    pre = {(m["batch"], m["input_len"]) for m in run["measurements"] if m["phase"] == "prefill"}
    dec = {(m["batch"], m["context"]) for m in run["measurements"] if m["phase"] == "decode"}
    assert pre == {(b, i) for b in batches for i in prompt_lens}
    assert dec == {(b, c) for b in batches for c in contexts}


# ---------------------------------------------------------------------------------------------------
# Measuring tiny models


@pytest.fixture(scope="module")
def torch_available():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")


def test_cli_measures_tiny_mixtral(tmp_path, torch_available):
    from capsim.cli.main import cli

    path = tmp_path / "tiny-mixtral.json"
    path.write_text(json.dumps(tiny("mistralai__Mixtral-8x7B-v0.1", num_experts_per_tok=2)))
    out = tmp_path / "runs" / "tiny.json"
    r = CliRunner().invoke(cli, ["measure", "--model", str(path), "--random-init", "--prompt-lens", "8,16",
                                 "--batches", "1,4", "--context", "8,12", "--repeats", "1", "--warmup", "1",
                                 "--threads", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "prefill" in r.stderr and f"wrote {out}" in r.stdout
    run = read_run(out)
    check_run(run, [1, 4], [8, 16], [8, 12])
    assert run["model"]["id"] == "tiny-mixtral" and run["device"]["threads"] == 1
    assert [p.name for p in out.parent.iterdir()] == ["tiny.json"]  # atomic write leaves no temporary file


@pytest.mark.parametrize("name,extra", [
    ("allenai__OLMoE-1B-7B-0924", dict(num_experts_per_tok=4)),
    ("deepseek-ai__DeepSeek-V3", dict(num_experts_per_tok=2, kv_lora_rank=16, q_lora_rank=16, qk_nope_head_dim=8,
                                      qk_rope_head_dim=8, v_head_dim=8)),
])
def test_measure_tiny_olmoe_and_deepseek(tmp_path, torch_available, name, extra):
    from capsim.measure.run import measure

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny(name, **extra)))
    run = measure(path, random_init=True, prompt_lens=[8], batches=[1, 3], context=[8], repeats=2, warmup=0,
                  threads=1, command=["test"])
    check_run(run, [1, 3], [8], [8])
    assert run["provenance"]["command"] == ["test"] and run["model"]["top_k"] == extra["num_experts_per_tok"]


def test_measure_scales_and_skips(tmp_path, torch_available):
    from capsim.measure.run import measure

    path = tmp_path / "mix.json"
    path.write_text(json.dumps(tiny("mistralai__Mixtral-8x7B-v0.1")))
    run = measure(path, random_init=True, prompt_lens=[4, 16], batches=[1, 2], context=4, repeats=1, warmup=0,
                  threads=1, scale={"layers": 1, "experts": 4}, max_prefill_tokens=16)
    assert run["model"]["config"]["num_hidden_layers"] == 1 and run["model"]["num_experts"] == 4
    assert run["model"]["scaled"] == {"layers": 1, "experts": 4}
    assert {(m["batch"], m["input_len"]) for m in run["measurements"] if m["phase"] == "prefill"} == {
        (1, 4), (2, 4), (1, 16)}
    assert "prefill batch 2 x 16" in run["notes"]


# ---------------------------------------------------------------------------------------------------
# Scaling


def test_scale_mixtral():
    c = scale_config(catalogue("mistralai__Mixtral-8x7B-v0.1"), layers=4, hidden=1024, experts=4,
                     intermediate=3584, vocab=1000)
    assert (c["num_hidden_layers"], c["hidden_size"], c["num_local_experts"], c["intermediate_size"]) == (
        4, 1024, 4, 3584)
    assert (c["num_attention_heads"], c["num_key_value_heads"]) == (8, 2)  # head_dim 128 and GQA 4:1 kept
    assert c["num_experts_per_tok"] == 2 and c["vocab_size"] == 1000
    spec = spec_from_config(c)
    assert spec.expert_intermediate == 3584 and spec.attention.head_dim == 128


def test_scale_olmoe():
    c = scale_config(catalogue("allenai__OLMoE-1B-7B-0924"), layers=2, hidden=512, experts=16, intermediate=256)
    assert (c["num_hidden_layers"], c["hidden_size"], c["num_experts"], c["intermediate_size"]) == (2, 512, 16, 256)
    assert (c["num_attention_heads"], c["num_key_value_heads"]) == (4, 4)
    assert c["num_experts_per_tok"] == 8
    assert scale_config(catalogue("allenai__OLMoE-1B-7B-0924"), experts=4)["num_experts_per_tok"] == 4


def test_scale_deepseek():
    v2 = catalogue("deepseek-ai__DeepSeek-V2-Lite")
    c = scale_config(v2, layers=4, hidden=1024, experts=32, intermediate=512)
    assert (c["num_hidden_layers"], c["hidden_size"], c["n_routed_experts"], c["moe_intermediate_size"]) == (
        4, 1024, 32, 512)
    assert c["first_k_dense_replace"] == 1 and c["n_shared_experts"] == 2 and c["q_lora_rank"] is None
    assert c["kv_lora_rank"] == 256 and c["num_attention_heads"] == c["num_key_value_heads"] == 8
    assert (c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]) == (128, 64, 128)
    assert c["intermediate_size"] == round(10944 * 512 / 1408)  # dense layer keeps its ratio to the expert
    spec = spec_from_config(c)
    assert spec.moe_layers == (False, True, True, True) and spec.shared_intermediate == 2 * 512
    v3 = scale_config(catalogue("deepseek-ai__DeepSeek-V3"), layers=2, hidden=896, experts=8)
    assert v3["first_k_dense_replace"] == 1  # at least one MoE layer left
    assert (v3["q_lora_rank"], v3["kv_lora_rank"]) == (192, 64)
    assert v3["n_group"] == 4 and v3["topk_group"] == 4 and v3["num_experts_per_tok"] == 8  # 2 experts per group
    assert v2 == catalogue("deepseek-ai__DeepSeek-V2-Lite")  # the input is not modified


def test_scale_nested_and_explicit_head_dim():
    q3 = scale_config(catalogue("Qwen__Qwen3-30B-A3B"), hidden=1024)
    assert q3["head_dim"] == 128 and q3["num_attention_heads"] == 8 and q3["num_key_value_heads"] == 1
    dbrx = scale_config(catalogue("databricks__dbrx-base"), layers=2, hidden=1536, experts=8, intermediate=512)
    assert dbrx["n_layers"] == 2 and dbrx["d_model"] == 1536 and dbrx["ffn_config"]["moe_num_experts"] == 8
    assert dbrx["ffn_config"]["ffn_hidden_size"] == 512
    l4 = scale_config(catalogue("meta-llama__Llama-4-Scout-17B-16E"), layers=4, experts=4)
    assert l4["text_config"]["num_hidden_layers"] == 4 and l4["text_config"]["num_local_experts"] == 4


def test_scale_errors():
    with pytest.raises(CapsimError, match="positive integer"):
        scale_config(catalogue("mistralai__Mixtral-8x7B-v0.1"), layers=0)
    with pytest.raises(CapsimError, match="not divisible"):
        scale_config(catalogue("mistralai__Mixtral-8x7B-v0.1"), hidden=1000, heads=3)


# ---------------------------------------------------------------------------------------------------
# Errors, files


def test_bad_config_path_is_one_line(tmp_path):
    from capsim.cli.main import cli

    r = CliRunner().invoke(cli, ["measure", "--model", str(tmp_path / "none.json"), "--random-init"])
    assert r.exit_code == 2
    assert r.stderr.startswith("capsim: error:") and r.stderr.count("\n") == 1 and "Traceback" not in r.output
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = CliRunner().invoke(cli, ["measure", "--model", str(bad), "--random-init"])
    assert r.exit_code == 2 and "unreadable config" in r.stderr and r.stderr.count("\n") == 1


def test_scaling_needs_random_init(tmp_path, torch_available):
    from capsim.measure.run import measure

    path = tmp_path / "mix.json"
    path.write_text(json.dumps(tiny("mistralai__Mixtral-8x7B-v0.1")))
    with pytest.raises(CapsimError, match="needs --random-init"):
        measure(path, random_init=False, scale={"layers": 1})
    with pytest.raises(CapsimError, match="no weights"):
        measure(path, random_init=False)


def test_read_run_rejects_other_files(tmp_path):
    p = write_run(tmp_path / "x.json", {"format": "capsim-run", "version": 1, "measurements": []})
    assert read_run(p)["version"] == 1
    (tmp_path / "y.json").write_text('{"format": "capsim-trace"}')
    with pytest.raises(CapsimError, match="not a capsim-run"):
        read_run(tmp_path / "y.json")


def test_cli_main_stays_torch_free():
    code = "import sys, capsim.cli.main; print('torch' in sys.modules or 'transformers' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------------
# The committed campaign


def test_committed_runs_are_complete():
    runs = sorted(RUNS.glob("*.json"))
    assert {p.stem for p in runs} >= {"mixtral-like", "olmoe-like", "deepseek-like"}
    dec, pre = {}, {}
    for p in runs:  # <shape>.json, plus <shape>-b64.json: the prefill batch 64 x 1024 the main run skipped
        run = read_run(p)
        name = Path(run["model"]["source"]).stem
        shape = json.loads((SHAPES / f"{name}.json").read_text())
        assert spec_from_config(run["model"]["config"]) == spec_from_config(shape)
        assert run["model"]["source_config_hash"] == config_hash(shape)
        dec.setdefault(name, set()).update((m["batch"], m["context"]) for m in run["measurements"]
                                           if m["phase"] == "decode")
        pre.setdefault(name, set()).update((m["batch"], m["input_len"]) for m in run["measurements"]
                                           if m["phase"] == "prefill")
        assert all(m["repeats"] >= (5 if p.stem == name else 3) for m in run["measurements"])
    for name in ("mixtral-like", "olmoe-like", "deepseek-like"):
        assert dec[name] == {(b, c) for b in (1, 4, 16, 64) for c in (128, 1024)}
        assert pre[name] >= {(b, i) for b in (1, 4, 16) for i in (128, 1024)} | {(64, 128)}
    # prefill 64 x 1024 (65,536 tokens, over a minute per forward on one thread): measured for two shapes
    assert all((64, 1024) in pre[name] for name in ("mixtral-like", "olmoe-like"))
