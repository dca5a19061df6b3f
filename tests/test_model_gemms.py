"""Weight-matrix shapes of a model (capsim.model.gemms) against the config and the parameter counts."""

from capsim.model.catalogue import load_spec
from capsim.model.gemms import distinct_shapes, model_gemms


def test_mixtral_shapes_from_its_config():
    g = model_gemms(load_spec("mixtral")[0])
    # Mixtral-8x7B config.json: hidden 4096, 32 heads x 128, 8 KV heads, intermediate 14336, vocab 32000
    assert [(m.k, m.n) for m in g["attn_proj"]] == [(4096, 4096), (4096, 1024), (4096, 1024), (4096, 4096)]
    assert [(m.k, m.n, m.row_parallel) for m in g["routed_experts"]] == [(4096, 2 * 14336, False),
                                                                          (14336, 4096, True)]
    assert [(m.k, m.n) for m in g["router"]] == [(4096, 8)]
    assert [(m.k, m.n) for m in g["lm_head"]] == [(4096, 32000)]
    assert g["dense_ffn"] == () and g["shared_experts"] == ()


def test_matrices_hold_exactly_the_counted_parameters():
    for name in ("mixtral", "deepseek-v3", "qwen3-30b-a3b", "olmoe"):
        spec = load_spec(name)[0]
        g = model_gemms(spec)
        # no projection biases in these configs: the attention parameters are the matrices'
        assert sum(m.k * m.n for m in g["attn_proj"]) == spec.attention.params(spec.hidden), name
        assert sum(m.k * m.n for m in g["routed_experts"]) == spec.expert_params, name
        assert sum(m.k * m.n for m in g["shared_experts"]) == spec.shared_params, name


def test_deepseek_v3_mla_and_shared_expert_shapes():
    spec = load_spec("deepseek-v3")[0]
    g = model_gemms(spec)
    # DeepSeek-V3 config.json: hidden 7168, 128 heads, q_lora_rank 1536, kv_lora_rank 512, qk_nope 128,
    # qk_rope 64, v_head_dim 128; one shared expert of moe_intermediate_size 2048 (gate, up, down apart)
    assert [(m.k, m.n) for m in g["attn_proj"]] == [(7168, 1536), (1536, 128 * 192), (7168, 576),
                                                     (512, 128 * 256), (128 * 128, 7168)]
    assert [(m.k, m.n) for m in g["shared_experts"]] == [(7168, 2048), (7168, 2048), (2048, 7168)]
    assert [(m.k, m.n) for m in g["mla_expand"]] == [(512, 128 * 256)]
    assert len(distinct_shapes(spec)) == len(set(distinct_shapes(spec)))
