"""Hybrid linear-attention models (issue 24): Qwen3-Next's Gated DeltaNet layers counted exactly against the
transformers class on the meta device, and priced as a fixed state per sequence beside the K/V of the
full-attention layers only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capsim.hardware.db import load
from capsim.model.spec import LINEAR, spec_from_config
from capsim.predict import Query, predict

DB = load()


def qwen3_next_config() -> dict:
    # transformers' Qwen3NextConfig defaults, which its docstring says yield the configuration of
    # Qwen3-Next-80B-A3B: hidden 2048, 48 layers, every 4th full attention (16 heads, 2 KV heads x 256, gated
    # output), the rest Gated DeltaNet (16 key heads, 32 value heads, 128 x 128, conv kernel 4), 512 experts top-10
    # of width 512 and a gated shared expert of 512
    from transformers import AutoConfig

    return AutoConfig.for_model("qwen3_next").to_dict()


def test_qwen3_next_counts_equal_the_transformers_class():
    from capsim.model.meta import meta_breakdown

    cfg = qwen3_next_config()
    spec = spec_from_config(cfg, "qwen3-next")
    assert spec.num_linear_layers == 36 and spec.attention_windows.count(LINEAR) == 36
    assert spec.params_breakdown() == meta_breakdown(cfg)
    # one Gated DeltaNet layer: in_proj_qkvz 2048 x (2 x 2048 + 2 x 4096) + in_proj_ba 2048 x 64 + conv1d
    # 8192 x 4 + dt_bias 32 + A_log 32 + out_proj 4096 x 2048 = 25,165,824 + 131,072 + 32,768 + 64 + 8,388,608
    assert spec.linear_attention.params(2048) == 33_718_336
    # one gated full-attention layer: q_proj 2048 x (16 x 256 x 2) + k, v 2048 x 512 each + o_proj 4096 x 2048
    # = 27,262,976
    assert spec.attention.params(2048) == 16_777_216 + 2 * 1_048_576 + 8_388_608


@pytest.mark.parametrize("model", ["Qwen/Qwen3-Next-80B-A3B-Instruct", "config"])
def test_a_hybrid_predict_holds_the_full_layers_kv_and_the_linear_state(model, tmp_path):
    # Qwen3-Next-80B-A3B from the catalogue (and from transformers' default config: the same shape) on one H100
    # at int4 (80B weights do not fit 80 GB at fp8)
    if model == "config":
        model = str(tmp_path / "qwen3-next.json")
        Path(model).write_text(json.dumps(qwen3_next_config()))
    rep = predict(Query(model=model, hardware="h100-sxm5-80gb", precision="int4", batch=8, input_len=4096,
                        output_len=256), DB)
    mem = rep["memory_bytes"]["device"]
    # K/V: 8 sequences x (4096 + 256) tokens x 12 full-attention layers x 2 KV heads x (256 + 256) x 2 bytes
    kv = 8 * 4352 * 12 * 2 * 512 * 2
    # state: 8 sequences x 36 linear layers x (32 value heads x 128 x 128 recurrent state + conv window
    # (2 x 16 x 128 + 32 x 128 = 8,192 channels) x (4 - 1)) x 2 bytes
    state = 8 * 36 * (32 * 128 * 128 + 8192 * 3) * 2
    assert mem["linear_state"] == state
    assert mem["kv_cache"] == pytest.approx(kv + state, rel=1e-12)
    assert any("Gated DeltaNet" in f for f in rep["scenario"]["features"])


def test_a_hybrid_decode_step_reads_the_state_and_runs_the_recurrence():
    from capsim.precision import PRECISIONS
    from capsim.sim.shape import shape_of

    s = shape_of(spec_from_config(qwen3_next_config(), "qwen3-next"), PRECISIONS["bf16"])
    assert s.linear_layers == 36 and s.linear_state_elements == 548_864
    # 7 FLOPs per state element per token (decay, S^T k, rank-1 update, S^T q) + the depthwise conv 2 x 8192 x 4
    assert s.linear_flops_per_token == 7 * 32 * 128 * 128 + 2 * 8192 * 4
    # the attention projections averaged over the layers: (12 full + 36 linear) / 48
    assert s.attn_params == pytest.approx((12 * 27_262_976 + 36 * 33_718_336) / 48)


def test_an_unmodelled_hybrid_field_is_an_error_naming_it():
    from capsim.errors import CapsimError

    cfg = dict(qwen3_next_config(), hybrid_override_pattern="M-M-")
    with pytest.raises(CapsimError, match="hybrid_override_pattern"):
        spec_from_config(cfg)
    cfg = qwen3_next_config()
    del cfg["linear_num_value_heads"]
    with pytest.raises(CapsimError, match="linear_num_value_heads"):
        spec_from_config(cfg)
