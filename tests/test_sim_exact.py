"""Exact FLOP and byte counts of the simulator, derived by hand, and the peers' weight-read floor."""

import numpy as np
import pytest

from capsim import engines, precision
from capsim.hardware.db import load
from capsim.model.catalogue import load_spec
from capsim.predict import Query, predict
from capsim.sim.experts import expected_activated
from capsim.sim.memory import kv_bytes_per_token
from capsim.sim.ops import step_costs
from capsim.sim.shape import shape_of

BF16 = precision.PRECISIONS["bf16"]


def _mixtral_decode(batch: int, context: int):
    spec, _ = load_spec("mixtral")
    s = shape_of(spec, BF16)
    return step_costs(s, tokens=batch, seqs=batch, pairs=batch * context, kv_read_tokens=batch * context,
                      decode=True, kv_bytes_per_element=2.0)


# Mixtral-8x7B (config: hidden 4096, 32 layers, 32 heads, 8 KV heads x 128, 8 experts top-2, expert FFN 14336,
# vocab 32000, untied), one device, bf16 weights and KV cache.
# FLOPs per decode token, at context c:
#   attention projections  2 x 41,943,040 params x 32 layers              =  2,684,354,560
#   routed experts         2 x 2 (top-2) x 176,160,768 params x 32         = 22,548,578,304
#   router                 2 x 4096 x 8 x 32                               =      2,097,152
#   LM head                2 x 4096 x 32,000                               =    262,144,000
#   norms                  4 FLOP x 4096 x 65 norms                        =      1,064,960
#   attention scores       2 x 32 heads x (128 + 128) x 32 layers x c      =    524,288 c
MIXTRAL_FLOPS_PER_TOKEN_FIXED = 2_684_354_560 + 22_548_578_304 + 2_097_152 + 262_144_000 + 1_064_960
MIXTRAL_SCORE_FLOPS_PER_CONTEXT = 524_288
# Weight bytes per decode STEP (bf16 = 2 bytes), A = distinct experts activated per layer:
#   attention 32 x 41,943,040 x 2 = 2,684,354,560; experts A x 176,160,768 x 2 x 32 = A x 11,274,289,152;
#   router 4096 x 8 x 2 x 32 = 2,097,152; norms (64 x 4096 + 4096) x 2 = 532,480;
#   LM head 4096 x 32,000 x 2 = 262,144,000; embedding rows: batch x 4096 x 2.
MIXTRAL_NON_EXPERT_WEIGHT_BYTES = 2_684_354_560 + 2_097_152 + 532_480 + 262_144_000
MIXTRAL_EXPERT_LAYER_BYTES = 11_274_289_152
# KV cache per token: 32 layers x 8 heads x (128 + 128) x 2 bytes = 131,072 bytes.
MIXTRAL_KV_BYTES_PER_TOKEN = 131_072


@pytest.mark.parametrize("batch", [1, 32])
def test_mixtral_decode_flops_per_token_exact(batch):
    context = 640
    step = _mixtral_decode(batch, context)
    flops = sum(float(op.flops) for op in step.ops.values())
    expected = batch * (MIXTRAL_FLOPS_PER_TOKEN_FIXED + MIXTRAL_SCORE_FLOPS_PER_CONTEXT * context)
    assert flops == expected
    assert flops / batch == 25_498_238_976 + 524_288 * context  # the same per token at any batch


def test_mixtral_decode_bytes_batch_1_exact():
    context = 640
    step = _mixtral_decode(1, context)
    weights = sum(float(op.weight_bytes) for op in step.ops.values())
    # Batch 1 activates exactly top-2 experts per layer: E (1 - (1 - 2/8)^1) = 2.
    assert float(step.activated_experts) == pytest.approx(2.0, rel=1e-15)
    assert weights == pytest.approx(MIXTRAL_NON_EXPERT_WEIGHT_BYTES + 2 * MIXTRAL_EXPERT_LAYER_BYTES + 8192, rel=1e-12)
    # 2,949,128,192 + 2 x 11,274,289,152 + 8,192 = 25,497,714,688 bytes: 25.5 GB per token at batch 1.
    assert weights == pytest.approx(25_497_714_688, rel=1e-12)
    kv = float(step.ops["attn_scores"].kv_bytes)
    assert kv == (context + 1) * MIXTRAL_KV_BYTES_PER_TOKEN  # read 640 cached tokens, write 1 new one


def test_mixtral_decode_bytes_batch_32_exact():
    context = 640
    step = _mixtral_decode(32, context)
    # 32 tokens each pick 2 of 8: expected distinct experts 8 (1 - (6/8)^32) = 7.999195...
    a = 8 * (1 - 0.75**32)
    assert float(step.activated_experts) == pytest.approx(a, rel=1e-12)
    weights = sum(float(op.weight_bytes) for op in step.ops.values())
    expected = MIXTRAL_NON_EXPERT_WEIGHT_BYTES + a * MIXTRAL_EXPERT_LAYER_BYTES + 32 * 8192
    assert weights == pytest.approx(expected, rel=1e-12)
    # 2,949,128,192 + 7.9991964 x 11,274,289,152 + 32 x 8,192 = 93.13 GB per step; / 32 = 2.91 GB per
    # token, 8.8x less than at batch 1 (the weights are shared by the batch).
    assert weights / 32 == pytest.approx(2_910_457_603.58, rel=1e-11)
    assert float(step.ops["attn_scores"].kv_bytes) == 32 * (context + 1) * MIXTRAL_KV_BYTES_PER_TOKEN


def test_kv_bytes_per_token():
    deepseek, _ = load_spec("deepseek-v3")
    # MLA: 61 layers x (kv_lora_rank 512 + rope key 64) x 2 bytes (bf16) = 70,272 bytes per token.
    assert float(kv_bytes_per_token(shape_of(deepseek, BF16), 2.0)) == 61 * 576 * 2 == 70_272
    qwen, _ = load_spec("qwen3-235b")
    # GQA: 94 layers x 4 KV heads x (128 + 128) x 2 bytes = 192,512 bytes per token; fp8 KV halves it.
    assert float(kv_bytes_per_token(shape_of(qwen, BF16), 2.0)) == 94 * 4 * 256 * 2 == 192_512
    assert float(kv_bytes_per_token(shape_of(qwen, BF16), 1.0)) == 96_256
    # TP8 over 4 KV heads: each device still holds one whole head (ceil(4/8) = 1 of 4): a quarter.
    assert float(kv_bytes_per_token(shape_of(qwen, BF16), 2.0, tp=8)) == 192_512 / 4


def test_expected_activated_experts():
    # MoE-CAP's example (shared/reference/moecap_metrics.md): Qwen3-235B, 128 experts, top-8, batch 16:
    # uniform routing gives 128 (1 - (1 - 8/128)^16) = 82.4 (the paper measures 57.7 on real routing).
    assert float(expected_activated(128, 8, 16)) == pytest.approx(82.4, abs=0.05)
    assert float(expected_activated(8, 2, 1)) == pytest.approx(2.0)
    assert float(expected_activated(8, 8, 5)) == 8.0  # top-k = E: every expert


def test_precision_bits_per_weight():
    bits = {name: p.bits_per_weight for name, p in precision.PRECISIONS.items()}
    assert bits["gguf-q8_0"] == 8.5  # 34 bytes per 32 weights (block_q8_0)
    assert bits["gguf-q4_0"] == 4.5  # 18 bytes per 32 weights (block_q4_0)
    assert bits["gguf-q4_k_m"] == 4.84 and bits["gguf-q3_k_s"] == 3.50  # llama.cpp quantize README, Llama 2 7B
    assert bits["nvfp4"] == 4.5  # 4-bit E2M1 + one 8-bit scale per 16
    assert bits["mxfp4"] == 4.25  # 4-bit E2M1 + one 8-bit scale per 32
    assert bits["int4"] == 4 + 20 / 128  # fp16 scale + 4-bit zero per group of 128
    assert all(b > 0 for b in bits.values())


# shared/reference/peers.md: Mixtral-8x7B bf16, 512 in / 128 out, 2x H100; weight-read floor at 100% of spec
# bandwidth: 3.81 ms at batch 1 (2 experts), 13.90 ms at batch 32 (~8 experts). GenZ's decode path reads top-k
# experts at any batch (4.18 -> 4.60 ms); llm-analysis reads all experts at batch 1 (10.00 ms).
PEERS_FLOOR_S = {1: 3.81e-3, 32: 13.90e-3}


def test_mixtral_tp2_h100_above_weight_read_floor_and_grows_with_batch():
    db = load()
    tpot = {}
    for batch in (1, 32):
        rep = predict(Query(model="mixtral", hardware="dgx-h100", devices=2, batch=batch, input_len=512,
                            output_len=128, routing="uniform", engine="roofline"), db)
        assert rep["scenario"]["tp"] == 2 and rep["scenario"]["precision"] == "bf16"
        tpot[batch] = rep["tpot_s"]
        assert tpot[batch] > PEERS_FLOOR_S[batch]
        # and not far above it: the ideal roofline adds only KV, activations and NVLink all-reduces
        assert tpot[batch] < 1.1 * PEERS_FLOOR_S[batch]
    assert rep["activated_experts_per_layer"] > 7.99  # batch 32 touches nearly all 8 experts
    assert tpot[32] > 3 * tpot[1]  # more experts read as batch grows (GenZ: only +10%)


def test_engine_profile_roofline_is_ideal():
    p = engines.load("roofline")
    assert (p.compute_efficiency, p.memory_efficiency, p.kernel_overhead_s, p.step_overhead_s) == (1, 1, 0, 0)


def test_catalogue_is_generated_and_complete():
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("build_catalogue", root / "scripts" / "build_catalogue.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    built = json.dumps(mod.build(with_meta=False), indent=1) + "\n"
    assert built == (root / "capsim" / "catalogue" / "models.json").read_text(), "run scripts/build_catalogue.py"
    ids = {m["id"] for m in json.loads(built)["models"]}
    issue_ids = {  # the catalogue the model-catalogue issue asks for
        "mistralai/Mixtral-8x7B-v0.1", "mistralai/Mixtral-8x22B-v0.1", "deepseek-ai/DeepSeek-V2-Lite",
        "deepseek-ai/DeepSeek-V2", "deepseek-ai/DeepSeek-V3", "Qwen/Qwen1.5-MoE-A2.7B", "Qwen/Qwen2-57B-A14B",
        "Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-235B-A22B", "allenai/OLMoE-1B-7B-0924", "databricks/dbrx-base",
        "openai/gpt-oss-20b", "openai/gpt-oss-120b", "meta-llama/Llama-4-Scout-17B-16E",
        "meta-llama/Llama-4-Maverick-17B-128E", "moonshotai/Kimi-K2-Instruct", "meta-llama/Llama-3.1-8B",
    }
    # issue 24 (models of 2026), those with a verbatim config so far
    issue_ids |= {"deepseek-ai/DeepSeek-V3.1", "zai-org/GLM-4.5-Air", "Qwen/Qwen3-Coder-30B-A3B-Instruct",
                  "Qwen/Qwen3-Coder-480B-A35B-Instruct"}
    # issue 24, second batch: reconstructed configs (configs/MISSING.md), one verbatim (-Thinking), and Instruct /
    # Chat ids that share a base config (aliases.yaml config_of)
    issue_ids |= {"Qwen/Qwen3-Next-80B-A3B-Instruct", "Qwen/Qwen3-Next-80B-A3B-Thinking", "zai-org/GLM-4.5",
                  "zai-org/GLM-4.6", "MiniMaxAI/MiniMax-M2", "baidu/ERNIE-4.5-300B-A47B-PT",
                  "baidu/ERNIE-4.5-21B-A3B-PT", "deepseek-ai/DeepSeek-V3.2-Exp",
                  "mistralai/Mixtral-8x7B-Instruct-v0.1", "deepseek-ai/DeepSeek-V2-Lite-Chat",
                  "deepseek-ai/DeepSeek-V2-Chat", "meta-llama/Llama-4-Scout-17B-16E-Instruct",
                  "meta-llama/Llama-4-Maverick-17B-128E-Instruct"}
    # issue 24, third batch: more Instruct / Chat / Thinking ids sharing a base config (config_of)
    issue_ids |= {"Qwen/Qwen3-30B-A3B-Instruct-2507", "Qwen/Qwen3-30B-A3B-Thinking-2507",
                  "Qwen/Qwen3-235B-A22B-Instruct-2507", "Qwen/Qwen3-235B-A22B-Thinking-2507",
                  "moonshotai/Kimi-K2-Instruct-0905", "Qwen/Qwen1.5-MoE-A2.7B-Chat",
                  "allenai/OLMoE-1B-7B-0924-Instruct", "deepseek-ai/DeepSeek-R1-0528"}
    assert ids == issue_ids and len(ids) >= 30
    assert load_spec("deepseek-r1")[1]["id"] == "deepseek-ai/DeepSeek-V3"


def test_vectorised_matches_scalar():
    spec, _ = load_spec("qwen3-30b")
    s = shape_of(spec, BF16)
    batches = np.array([1, 4, 64])
    vec = step_costs(s, tokens=batches, seqs=batches, pairs=batches * 100, kv_read_tokens=batches * 100,
                     decode=True, kv_bytes_per_element=2.0)
    for i, b in enumerate(batches):
        one = step_costs(s, tokens=b, seqs=b, pairs=b * 100, kv_read_tokens=b * 100, decode=True,
                         kv_bytes_per_element=2.0)
        assert float(vec.ops["routed_experts"].weight_bytes[i]) == float(one.ops["routed_experts"].weight_bytes)


def test_window_sums_match_brute_force():
    from capsim.sim.span import _sum_min

    for lo, hi, w in [(1, 10, 0), (1, 10, 4), (5, 10, 4), (3, 3, 4), (5, 20, 7), (129, 300, 128), (1, 1, 0)]:
        assert float(_sum_min(lo, hi, w)) == sum(min(p, w or 10**9) for p in range(lo, hi + 1))


def test_gpt_oss_sliding_window_kv_memory():
    from capsim.sim.memory import memory_use

    spec, _ = load_spec("gpt-oss-20b")
    s = shape_of(spec, BF16)
    assert s.windows == ((0, 12), (128, 12))  # layer_types alternate sliding (window 128) and full attention
    m = memory_use(s, batch=1, input_len=8192, output_len=1024, kv_bytes_per_element=2.0, capacity_bytes=1e12)
    # 12 full layers keep 9216 tokens, 12 sliding layers keep 128; per layer and token 8 KV heads x (64 + 64)
    # elements x 2 bytes = 2048 bytes: (12 x 9216 + 12 x 128) x 2048 = 229,638,144 bytes.
    assert float(m.kv_cache) == (12 * 9216 + 12 * 128) * 2048 == 229_638_144


def test_mixed_expert_parallel_rows_in_one_call():
    spec, _ = load_spec("mixtral")
    s = shape_of(spec, BF16)
    step = step_costs(s, tokens=np.array([8, 8]), seqs=np.array([8, 8]), pairs=800, kv_read_tokens=800,
                      decode=True, kv_bytes_per_element=2.0, tp=np.array([8, 8]), ep=np.array([1, 8]),
                      n=np.array([8, 8]))
    # Two splits over 8 devices: TP splits every activated expert in 8 (A / 8 experts' bytes per device, A =
    # 8 (1 - (3/4)^8) = 7.2) ; EP8 puts one whole expert on each device and the step waits for the busiest:
    # it reads its expert whenever any token picked it, 1 - (3/4)^8 = 0.8999, and the max over 8 such devices
    # (independent-ranks estimate, capsim.sim.experts.busiest_rank) is nearly 1 expert.
    from capsim.sim.experts import busiest_rank, expected_activated

    w = step.ops["routed_experts"].weight_bytes
    act, busy = float(expected_activated(8, 2, 8)), float(busiest_rank(8, 2, 8, 8)[0])
    assert busy == pytest.approx(1 - (1 - (1 - 0.75 ** 8)) ** 8)  # E[max of 8 Bernoulli(0.8999)]
    assert w[1] == pytest.approx(w[0] * busy / (act / 8))
    assert step.ops["ep_dispatch"].link_bytes[0] == 0 < step.ops["ep_dispatch"].link_bytes[1]


def test_costs_add_up_by_operator_family():
    # The cost records add (after tinygrad's Estimates): a family is the sum of its operators, the step the
    # sum of its families. Mixtral decode, batch 1, context 100, one device (the FLOPs above): the experts
    # family is the router (2,097,152) and the routed experts (22,548,578,304); the head family the LM head
    # (262,144,000) and the norms (1,064,960; the embedding has none).
    from capsim.sim.cost import FAMILIES, Cost

    step = _mixtral_decode(1, 100)
    experts = step.family("experts")
    assert float(experts.flops) == 2_097_152 + 22_548_578_304
    assert float(step.family("head").flops) == 262_144_000 + 1_064_960
    assert float(step.family("attention").flops) == 2_684_354_560 + 524_288 * 100
    total = sum((step.family(f) for f in FAMILIES), Cost())
    for field in ("flops", "weight_bytes", "kv_bytes", "act_bytes", "kernels", "link_bytes", "calls"):
        assert float(getattr(total, field)) == pytest.approx(float(getattr(step.total, field)), rel=1e-15), field
    assert float(step.total.flops) == MIXTRAL_FLOPS_PER_TOKEN_FIXED + MIXTRAL_SCORE_FLOPS_PER_CONTEXT * 100
    a, b = Cost(flops=1.0, weight_bytes=2.0, calls=3.0), Cost(flops=10.0, kv_bytes=5.0, link_bytes=7.0)
    assert (a + b) == Cost(flops=11.0, weight_bytes=2.0, kv_bytes=5.0, link_bytes=7.0, calls=3.0)


def test_collectives_are_operators_with_bytes_and_calls():
    # Mixtral decode, batch 8 over 8 devices, TP8 then EP8 (TP1). TP all-reduce: 2 calls per layer x 32 =
    # 64, each ring sending 2 x 7/8 of the 4096 x 2-byte hidden state of the 8 tokens: 64 x 7/4 x 65,536 =
    # 7,340,032 bytes. EP8: dispatch and combine, one call per MoE layer each (32), each sending the device's
    # 1 token's top-2 copies to the 7 of 8 other ranks: 1 x 2 x 8192 x 7/8 x 32 = 458,752 bytes each, times the
    # busiest rank's load over the mean (16 assignments on 8 ranks: E[max of 8 Binomial(16, 1/8)] / 2).
    spec, _ = load_spec("mixtral")
    s = shape_of(spec, BF16)
    tp8 = step_costs(s, tokens=8, seqs=8, pairs=800, kv_read_tokens=800, decode=True, kv_bytes_per_element=2.0,
                     tp=8, n=8)
    assert (float(tp8.ops["tp_allreduce"].calls), float(tp8.ops["tp_allreduce"].link_bytes)) == (64, 7_340_032)
    assert float(tp8.ops["ep_dispatch"].calls) == 0 and tp8.ops["tp_allreduce"].family == "collectives"
    ep8 = step_costs(s, tokens=8, seqs=8, pairs=800, kv_read_tokens=800, decode=True, kv_bytes_per_element=2.0,
                     tp=1, ep=8, n=8)
    from capsim.sim.experts import busiest_rank, max_binomial

    load = float(busiest_rank(8, 2, 8, 8)[1])
    assert load == pytest.approx(max_binomial(16, 1 / 8, 8) / 2)
    for name in ("ep_dispatch", "ep_combine"):
        assert float(ep8.ops[name].calls) == 32, name
        assert float(ep8.ops[name].link_bytes) == pytest.approx(458_752 * load, rel=1e-12), name
    assert float(ep8.ops["tp_allreduce"].calls) == 0 and float(ep8.ops["pp_hop"].link_bytes) == 0
    # a pipeline of 4 stages: 3 hops of the 8 tokens' hidden states, 3 x 8 x 8192 = 196,608 bytes
    pp4 = step_costs(s, tokens=8, seqs=8, pairs=800, kv_read_tokens=800, decode=True, kv_bytes_per_element=2.0, pp=4)
    assert (float(pp4.ops["pp_hop"].calls), float(pp4.ops["pp_hop"].link_bytes)) == (3, 196_608)
