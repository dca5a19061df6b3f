"""The random-initialised MoE shapes capsim's engine campaigns run (vLLM's CPU build, llama.cpp) and what each
run records about the machine: stdlib only, so the runners can use it from any virtual environment."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# Random-init MoE shapes, a few hundred M parameters each. The mixtral/olmoe/deepseek configs are the ones in
# validation/measured/shapes/ (capsim's hf-eager CPU measurements), so the two engines can be compared on the
# same models; qwen3-moe-like is the Qwen3-30B-A3B structure scaled to 8 layers, hidden 1024.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen3-moe-like": {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "hidden_size": 1024,
        "num_hidden_layers": 8,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "num_experts": 64,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 336,
        "intermediate_size": 3072,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": True,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
    },
    "mixtral-like": {"architectures": ["MixtralForCausalLM"], "shape_file": "mixtral-like.json"},
    "olmoe-like": {"architectures": ["OlmoeForCausalLM"], "shape_file": "olmoe-like.json",
                   "max_position_embeddings": 4096},
    # vLLM's MLA supports only a latent head of 576 (kv_lora_rank 512 + rope 64, DeepSeek-V2/V3's own): the
    # shapes/ file's kv_lora_rank 192 fails with "Head dimension 256 is not supported by MLA".
    "deepseek-like": {"architectures": ["DeepseekV2ForCausalLM"], "shape_file": "deepseek-like.json",
                      "kv_lora_rank": 512},
}
DEFAULT_SHAPES = ("qwen3-moe-like", "mixtral-like", "olmoe-like", "deepseek-like")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    """CPU model, ISA flags, cores, memory (from /proc; no hostname)."""
    info = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").exists() else ""
    model, flags, vendor = "", set(), ""
    for line in info.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "vendor_id" and not vendor:
            vendor = value.strip()
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines() if Path("/proc/meminfo").exists() else []:
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    isa = {f: f in flags for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                                   "amx_tile", "amx_bf16", "amx_int8")}
    return {
        "cpu_model": model, "vendor": vendor, "arch": platform.machine(),
        "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kib / 1024**2, 2), "isa": isa, "amx": any(isa[f] for f in isa if f.startswith("amx")),
        "hypervisor": "hypervisor" in flags, "kernel": platform.release(), "python": platform.python_version(),
    }


def shape_config(name: str) -> dict[str, Any]:
    spec = dict(SHAPES[name])
    shape_file = spec.pop("shape_file", None)
    cfg: dict[str, Any] = {}
    if shape_file:
        cfg = json.loads((REPO / "validation" / "measured" / "shapes" / shape_file).read_text())
    cfg.update(spec)
    return cfg


