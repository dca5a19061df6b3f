"""`capsim trace collect` on tiny random-initialised models of every router family the catalogue uses.

Each tiny config is the catalogue's real config.json shrunk (2-4 layers, hidden 32, 8 experts, top-2,
vocab 256), so the family's real quirks (yarn rope, fp8/mxfp4 quantization_config, kimi_k2 alias,
Llama-4's nested text_config, DBRX's nested ffn_config) go through the collector.

The key check (test_recorded_ids_equal_ids_the_experts_used): an independent forward pre-hook on
each MoE layer's experts module captures the expert ids (and weights) the experts were actually run
with; the trace must hold exactly those, for every real token of prefill and decode. For Llama-4,
whose experts run densely on score-weighted inputs, "used" means the experts whose score is non-zero.

Convention checked: max-new-tokens N gives N - 1 decode rows per sequence (token N is not fed back).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import capsim
from capsim.errors import CapsimError
from capsim.traces.format import open_trace

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from capsim.traces import collect as C  # noqa: E402

CONFIGS = Path(capsim.__file__).parent / "catalogue" / "configs"
SPECIAL = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None, vocab_size=256, max_position_embeddings=512)
ATTN = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2)
MLA = dict(hidden_size=32, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=3, first_k_dense_replace=1,
           num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
           kv_lora_rank=16, q_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8)
# case -> (catalogue config, overrides, MoE layer indices)
TINY = {
    "mixtral": ("mistralai__Mixtral-8x7B-v0.1", dict(**ATTN, intermediate_size=64, num_hidden_layers=2,
                                                     num_local_experts=8, num_experts_per_tok=2), [0, 1]),
    "qwen2_moe": ("Qwen__Qwen1.5-MoE-A2.7B", dict(**ATTN, intermediate_size=64, moe_intermediate_size=32,
                                                  shared_expert_intermediate_size=64, num_hidden_layers=2,
                                                  num_experts=8, num_experts_per_tok=2), [0, 1]),
    "qwen3_moe": ("Qwen__Qwen3-30B-A3B", dict(**ATTN, intermediate_size=64, moe_intermediate_size=32, head_dim=8,
                                              num_hidden_layers=2, num_experts=8, num_experts_per_tok=2,
                                              norm_topk_prob=True), [0, 1]),
    "olmoe": ("allenai__OLMoE-1B-7B-0924", dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                                                intermediate_size=32, num_hidden_layers=2, num_experts=8,
                                                num_experts_per_tok=2), [0, 1]),
    # DeepSeek-V2: topk_method group_limited_greedy; V2-Lite: greedy
    "deepseek_v2": ("deepseek-ai__DeepSeek-V2", dict(**MLA, n_group=4, topk_group=1), [1, 2]),  # k > topk_group
    "deepseek_v2_lite": ("deepseek-ai__DeepSeek-V2-Lite", dict(**MLA, n_group=1, topk_group=1), [1, 2]),
    "deepseek_v3": ("deepseek-ai__DeepSeek-V3", dict(**MLA, n_group=4, topk_group=2), [1, 2]),
    "kimi_k2": ("moonshotai__Kimi-K2-Instruct", dict(**MLA, n_group=1, topk_group=1), [1, 2]),
    "gpt_oss": ("openai__gpt-oss-20b", dict(**ATTN, intermediate_size=32, head_dim=8, num_hidden_layers=2,
                                            num_local_experts=8, num_experts_per_tok=2, experts_per_token=2,
                                            layer_types=["sliding_attention", "full_attention"]), [0, 1]),
    "llama4": ("meta-llama__Llama-4-Maverick-17B-128E",  # interleave_moe_layer_step 2: MoE on odd layers
               dict(text_config=dict(**ATTN, **SPECIAL, intermediate_size=32, intermediate_size_mlp=64, head_dim=8,
                                     num_hidden_layers=4, num_local_experts=8, num_experts_per_tok=2)), [1, 3]),
    "dbrx": ("databricks__dbrx-base", dict(d_model=32, n_heads=4, n_layers=2, max_seq_len=512,
                                           attn_config=dict(clip_qkv=8, kv_n_heads=2, rope_theta=500000),
                                           ffn_config=dict(ffn_hidden_size=32, moe_num_experts=8, moe_top_k=2)),
             [0, 1]),
}
PROMPTS = ["hello world", "abc", "mixture of experts!"]  # byte fallback: 11, 3 and 19 tokens
N_NEW, BATCH = 3, 2


def tiny_config(case: str, **extra) -> dict:
    name, overrides, _ = TINY[case]
    cfg = json.loads((CONFIGS / f"{name}.json").read_text())
    for key, value in {**overrides, **extra}.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    if "text_config" not in overrides:
        cfg.update({k: v for k, v in SPECIAL.items() if k not in extra})
    return cfg


def write_config(tmp_path: Path, case: str, **extra) -> Path:
    p = tmp_path / f"{case}.json"
    p.write_text(json.dumps(tiny_config(case, **extra)))
    return p


@pytest.fixture
def prompts(tmp_path) -> Path:
    p = tmp_path / "prompts.txt"
    p.write_text("\n".join(PROMPTS[:1] + [""] + PROMPTS[1:]) + "\n")  # a blank line, skipped
    return p


def expected_layout(lens: list[int], batch: int, n_new: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sequence, position, phase) in processing order, with no EOS stop."""
    seq, pos, phase = [], [], []
    for lo in range(0, len(lens), batch):
        ids = range(lo, min(lo + batch, len(lens)))
        for s in ids:
            seq += [s] * lens[s]
            pos += list(range(lens[s]))
            phase += [0] * lens[s]
        for step in range(1, n_new):
            for s in ids:
                seq.append(s)
                pos.append(lens[s] + step - 1)
                phase.append(1)
    return np.array(seq), np.array(pos), np.array(phase)


def _layer(name: str) -> int:
    return int(re.search(r"\.(\d+)\.", name).group(1))


class UsedExperts:
    """Independent capture of what the experts were run with, per forward call and MoE layer."""

    def __init__(self, model, family: str):
        self.calls: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.router_checks = 0
        router = C.FAMILIES[family]
        for name, mod in model.named_modules():
            cls = type(mod).__name__
            if cls == "Llama4Router":  # dense experts: used = experts with a non-zero score
                mod.register_forward_hook(self._llama4(_layer(name)))
            elif cls.endswith("Experts") and cls != "Llama4TextExperts":
                mod.register_forward_pre_hook(self._experts(_layer(name)), with_kwargs=True)
            if cls == router.router and router.returns == "logits,weights,indices":
                mod.register_forward_hook(self._router_rule(C.routing_rule(family, model.config)))
            if cls == "DeepseekV3TopkRouter":  # exercise the correction bias (zeros at init)
                mod.e_score_correction_bias.copy_(torch.randn(mod.e_score_correction_bias.shape) * 0.02)

    def _experts(self, layer):
        def hook(module, args, kwargs):
            idx = args[1] if len(args) > 1 else kwargs.get("top_k_index", kwargs.get("router_indices"))
            w = args[2] if len(args) > 2 else kwargs.get("top_k_weights", kwargs.get("routing_weights"))
            self.calls.setdefault(layer, []).append((idx.numpy().copy(), w.float().numpy().copy()))
        return hook

    def _llama4(self, layer):
        def hook(module, args, output):
            scores = output[0].float().numpy()
            k = module.top_k
            idx = np.stack([np.flatnonzero(row) for row in scores])
            assert idx.shape == (len(scores), k)
            self.calls.setdefault(layer, []).append((idx, np.take_along_axis(scores, idx, 1)))
        return hook

    def _router_rule(self, rule):
        def hook(module, args, output):  # the generic rule reproduces the router's own output exactly
            logits, weights, ids = output
            ids2, w2 = C.select_experts(logits, rule, getattr(module, "e_score_correction_bias", None))
            assert torch.equal(ids, ids2)
            torch.testing.assert_close(w2.to(weights.dtype), weights)
            self.router_checks += 1
        return hook

    def per_token(self, layers: list[int], lens: list[int], batch: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, layers, k) ids and weights of the real tokens, padding dropped, in processing order."""
        out_ids, out_w = [], []
        for layer in layers:
            calls = iter(self.calls[layer])
            ids_l, w_l = [], []
            for lo in range(0, len(lens), batch):
                blens = lens[lo:lo + batch]
                width = max(blens)
                ids, w = next(calls)  # prefill: (b * width, k), left-padded rows
                keep = np.concatenate([np.arange(width) >= width - n for n in blens])
                ids_l.append(ids[keep])
                w_l.append(w[keep])
                for _ in range(N_NEW - 1):
                    ids, w = next(calls)
                    ids_l.append(ids)
                    w_l.append(w)
            assert next(calls, None) is None
            out_ids.append(np.concatenate(ids_l))
            out_w.append(np.concatenate(w_l))
        return np.stack(out_ids, 1), np.stack(out_w, 1)


def _strict(name):
    raise ValueError(f"meta.json holds {name}")


@pytest.mark.parametrize("case", list(TINY))
def test_recorded_ids_equal_ids_the_experts_used(tmp_path, prompts, case):
    cfg_file = write_config(tmp_path, case)
    family = C.family_of(tiny_config(case))[1]
    used: list[UsedExperts] = []
    res = C.collect(cfg_file, prompts, N_NEW, BATCH, tmp_path / "trace", random_init=True,
                    on_model=lambda m: used.append(UsedExperts(m, family)))
    t = open_trace(tmp_path / "trace", verify=True)
    json.loads((tmp_path / "trace" / "meta.json").read_text(), parse_constant=_strict)  # no NaN/Infinity
    assert not (tmp_path / "trace.partial").exists()
    lens = [len(p.encode()) for p in PROMPTS]
    layers = TINY[case][2]
    # layout: prompt tokens + (N - 1) decode tokens per sequence, no padding
    seq, pos, phase = expected_layout(lens, BATCH, N_NEW)
    assert t.meta["moe_layer_indices"] == layers and t.meta["moe_layers"] == len(layers)
    assert t.expert_ids.shape == (sum(lens) + len(lens) * (N_NEW - 1), len(layers), 2)
    np.testing.assert_array_equal(t.sequence, seq)
    np.testing.assert_array_equal(t.position, pos)
    np.testing.assert_array_equal(t.phase, phase)
    assert t.meta["prefill_tokens"] == sum(lens) and t.meta["decode_tokens"] == len(lens) * (N_NEW - 1)
    assert t.num_experts == 8 and t.top_k == 2 and t.meta["synthetic"] is False
    assert t.meta["random_init"] is True and t.meta["family"] == family
    assert [len(g) for g in res.generated] == [N_NEW] * len(PROMPTS)
    ids = np.asarray(t.expert_ids)
    assert ids.max() < 8 and (np.sort(ids, -1)[..., 1:] != np.sort(ids, -1)[..., :-1]).all()  # distinct ids
    assert len(np.unique(ids)) > 2  # routing is not degenerate
    # the key check: recorded ids == the ids the experts were run with (as sets per token and layer)
    used_ids, used_w = used[0].per_token(layers, lens, BATCH)
    order_rec, order_used = np.argsort(ids, -1), np.argsort(used_ids, -1)
    np.testing.assert_array_equal(np.take_along_axis(ids, order_rec, -1),
                                  np.take_along_axis(used_ids, order_used, -1))
    np.testing.assert_allclose(np.take_along_axis(np.asarray(t.weights, np.float32), order_rec, -1),
                               np.take_along_axis(used_w, order_used, -1), rtol=2e-3, atol=1e-4)
    if C.FAMILIES[family].returns == "logits,weights,indices":
        n_forwards = 2 * N_NEW  # 2 batches, each 1 prefill + N - 1 decode forwards
        assert used[0].router_checks == len(layers) * n_forwards  # every router call re-derived exactly


def test_open_trace_without_torch(tmp_path, prompts):
    C.collect(write_config(tmp_path, "mixtral"), prompts, 2, 2, tmp_path / "tr", random_init=True)
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "from capsim.traces.format import open_trace\n"
            f"t = open_trace({str(tmp_path / 'tr')!r}, verify=True)\n"
            "print(len(t), t.expert_ids.shape[1], 'torch' in sys.modules and sys.modules['torch'] is not None)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == [str(sum(len(p.encode()) for p in PROMPTS) + len(PROMPTS)), "2", "False"]


class Interrupt(Exception):
    pass


def _arrays(path):
    t = open_trace(path)
    return {k: np.asarray(v) for k, v in t.arrays.items()}


def _stop_after_first(i):
    raise Interrupt


def test_resume_skips_finished_batches_and_equals_uninterrupted_run(tmp_path, prompts):
    cfg = write_config(tmp_path, "mixtral")
    out = tmp_path / "tr"
    with pytest.raises(Interrupt):
        C.collect(cfg, prompts, N_NEW, 1, out, random_init=True, on_batch=_stop_after_first)
    assert not out.exists() and (tmp_path / "tr.partial" / "batch_0.npz").is_file()
    res = C.collect(cfg, prompts, N_NEW, 1, out, random_init=True)
    assert res.resumed_batches == [0] and res.computed_batches == [1, 2]
    assert not (tmp_path / "tr.partial").exists()
    full = C.collect(cfg, prompts, N_NEW, 1, tmp_path / "full", random_init=True)
    assert full.computed_batches == [0, 1, 2]
    a, b = _arrays(out), _arrays(tmp_path / "full")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert res.meta["content_sha256"] == full.meta["content_sha256"]


def test_partial_from_other_arguments_is_discarded(tmp_path, prompts):
    cfg = write_config(tmp_path, "mixtral")
    with pytest.raises(Interrupt):
        C.collect(cfg, prompts, N_NEW, 1, tmp_path / "tr", random_init=True, on_batch=_stop_after_first)
    res = C.collect(cfg, prompts, N_NEW, 1, tmp_path / "tr", random_init=True, seed=1)
    assert res.resumed_batches == [] and res.computed_batches == [0, 1, 2]


def test_failed_run_leaves_previous_output_intact(tmp_path, prompts):
    cfg = write_config(tmp_path, "mixtral")
    out = tmp_path / "tr"
    first = C.collect(cfg, prompts, 2, 2, out, random_init=True)
    with pytest.raises(Interrupt):
        C.collect(cfg, prompts, 4, 2, out, random_init=True, on_batch=_stop_after_first)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\nnot json\n')
    with pytest.raises(CapsimError, match=r"bad.jsonl:2: not JSON"):
        C.collect(cfg, bad, 2, 2, out, random_init=True)
    t = open_trace(out, verify=True)
    assert t.meta["content_sha256"] == first.meta["content_sha256"] and t.meta["max_new_tokens"] == 2
    (tmp_path / "not_a_trace").write_text("keep me")
    with pytest.raises(CapsimError, match="exists and is a file; refusing to replace it"):
        C.collect(cfg, prompts, 2, 2, tmp_path / "not_a_trace", random_init=True)
    assert (tmp_path / "not_a_trace").read_text() == "keep me"


def test_eos_stops_a_sequence(tmp_path, prompts):
    n_new = 4
    base = C.collect(write_config(tmp_path, "mixtral"), prompts, n_new, 3, tmp_path / "a", random_init=True)
    eos = base.generated[0][1]  # sequence 0 stops after its second generated token
    cfg = write_config(tmp_path, "mixtral", eos_token_id=eos)
    res = C.collect(cfg, prompts, n_new, 3, tmp_path / "b", random_init=True)
    t = open_trace(tmp_path / "b")
    assert res.meta["eos_token_ids"] == [eos]
    for s, gen in enumerate(base.generated):
        stop = gen.index(eos) + 1 if eos in gen else n_new  # tokens generated until (and with) EOS
        assert res.generated[s] == gen[:stop]
        assert int(np.sum((t.sequence == s) & (t.phase == 1))) == stop - 1
    # the routing of what was computed is unchanged by stopping
    a = _arrays(tmp_path / "a")
    rows_b = {(int(s), int(p)) for s, p in zip(t.sequence, t.position, strict=True)}
    keep = np.array([(int(s), int(p)) in rows_b for s, p in zip(a["sequence"], a["position"], strict=True)])
    np.testing.assert_array_equal(a["expert_ids"][keep], np.asarray(t.expert_ids))


def test_checkpoint_folder_and_tokenizer(tmp_path, prompts):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    cfg = write_config(tmp_path, "mixtral")
    model, _, _ = C.load_hf_model(cfg, random_init=True, seed=0)
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    assert (folder / "config.json").is_file()
    # same weights: the checkpoint run equals the random-init run (byte fallback: no tokenizer yet)
    a = C.collect(folder, prompts, N_NEW, BATCH, tmp_path / "a")
    b = C.collect(cfg, prompts, N_NEW, BATCH, tmp_path / "b", random_init=True)
    assert a.meta["random_init"] is False and a.meta["content_sha256"] == b.meta["content_sha256"]
    # with a tokenizer in the folder, prompts are tokenized by it (one word = one token here)
    vocab = {w: i for i, w in enumerate(["[UNK]", "hello", "world", "abc", "mixture", "of", "experts!"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)
    c = C.collect(folder, prompts, N_NEW, BATCH, tmp_path / "c")
    t = open_trace(tmp_path / "c")
    words = [len(p.split()) for p in PROMPTS]
    assert [int(np.sum((t.sequence == s) & (t.phase == 0))) for s in range(3)] == words
    assert c.meta["tokenizer"] == "model folder"
    # a config file without weights needs --random-init
    with pytest.raises(CapsimError, match="no weights"):
        C.collect(cfg, prompts, N_NEW, BATCH, tmp_path / "d")
    # weights the checkpoint lacks would be random: refused
    conf = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**conf, "num_hidden_layers": 3}))
    with pytest.raises(CapsimError, match=r"checkpoint lacks .* model.layers.2"):
        C.collect(folder, prompts, N_NEW, BATCH, tmp_path / "e")


def test_llama4_multimodal_checkpoint_loads_the_text_model(tmp_path, prompts):
    from transformers import AutoConfig, Llama4ForConditionalGeneration

    cfg = tiny_config("llama4")
    cfg["vision_config"].update(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=32,
                                image_size=28, patch_size=14, vision_output_dim=32, projector_input_dim=32,
                                projector_output_dim=32)
    torch.manual_seed(0)
    full = Llama4ForConditionalGeneration(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).float()
    full.save_pretrained(tmp_path / "ckpt")
    model, _, family = C.load_hf_model(tmp_path / "ckpt", random_init=False)
    assert type(model).__name__ == "Llama4ForCausalLM" and family == "llama4_text"
    assert torch.equal(model.model.layers[3].feed_forward.router.weight,
                       full.language_model.model.layers[3].feed_forward.router.weight)
    res = C.collect(tmp_path / "ckpt", prompts, N_NEW, BATCH, tmp_path / "tr")
    assert res.meta["moe_layer_indices"] == [1, 3] and res.meta["model_type"] == "llama4"


def test_bad_model_inputs(tmp_path, prompts):
    with pytest.raises(CapsimError, match="not a supported MoE family"):
        C.collect(CONFIGS / "meta-llama__Llama-3.1-8B.json", prompts, 2, 1, tmp_path / "x", random_init=True)
    with pytest.raises(CapsimError, match="must be a model folder"):
        C.collect(tmp_path / "nope", prompts, 2, 1, tmp_path / "x", random_init=True)
    with pytest.raises(CapsimError, match="--batch-size 0: expected an integer >= 1"):
        C.collect(write_config(tmp_path, "mixtral"), prompts, 2, 0, tmp_path / "x", random_init=True)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_cli_collect(tmp_path, prompts):
    from click.testing import CliRunner

    from capsim.cli.trace_collect import collect_cmd

    cfg = write_config(tmp_path, "gpt_oss")
    args = ["--model", str(cfg), "--prompts", str(prompts), "--max-new-tokens", "2", "--batch-size", "2",
            "--out", str(tmp_path / "tr"), "--random-init", "--seed", "3", "--max-prompt-tokens", "4"]
    r = CliRunner().invoke(collect_cmd, args + ["--json"])
    assert r.exit_code == 0, r.output
    meta = json.loads(r.stdout)
    assert meta["tokens"] == 4 + 3 + 4 + 3 and meta["seed"] == 3 and meta["max_prompt_tokens"] == 4
    assert meta["libraries"]["torch"] == torch.__version__ and meta["device"] == "cpu"
    assert meta["prompt_source"]["prompts"] == 3 and len(meta["prompt_source"]["sha256"]) == 64
    r = CliRunner().invoke(collect_cmd, args)
    assert r.exit_code == 0 and "wrote" in r.stdout and "14 tokens" in r.stdout
    r = CliRunner().invoke(collect_cmd, [*args[:2], "--prompts", str(tmp_path / "none.txt"), *args[4:]])
    assert isinstance(r.exception, CapsimError) and "none.txt: no such file" in str(r.exception)
