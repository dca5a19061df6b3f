"""Bad files: model configs, hardware YAML, traces, grids, validation configs, prompts and result files a user
hands capsim. Each is refused with exit 2, one line naming the file (and field), no traceback, nothing touched
(tests/badinput.py). A valid file is written first and one thing in it is broken, so each case tests one
check."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from badinput import NOT_UTF8, refused, write_json, write_yaml

REPO = Path(__file__).resolve().parent.parent
MIXTRAL = json.loads((REPO / "capsim/catalogue/configs/mistralai__Mixtral-8x7B-v0.1.json").read_text())
NAN = float("nan")

# ------------------------------------------------------------------------------------------ config.json
CONFIG_CASES = [  # (field, value, needle): one field of Mixtral's config.json broken
    *[("num_hidden_layers", v, "num_hidden_layers") for v in (NAN, "abc", -1, 0, 1e30, 2.5, None, [], True)],
    *[("hidden_size", v, "hidden_size") for v in (NAN, "abc", -4096, 0, 1e30)],
    *[("num_attention_heads", v, "num_attention_heads") for v in (0, "abc", -3, 2.5)],
    *[("num_key_value_heads", v, "num_key_value_heads") for v in (3, 64, 0, "x", NAN, -8)],
    *[("num_local_experts", v, "num_local_experts") for v in (-1, "abc", 1e30, NAN)],
    *[("num_experts_per_tok", v, v if v == 9 else "num_experts_per_tok") for v in (0, 9, "abc", -2)],
    *[("intermediate_size", v, "intermediate_size") for v in (-1, NAN, "abc", 0)],
    *[("vocab_size", v, "vocab_size") for v in (0, "abc", -1, 1e30)],
    *[("sliding_window", v, "sliding_window") for v in (-5, "abc", NAN, 2.5)],
    ("layer_types", ["full_attention"], "layer_types"),
    ("layer_types", ["linear_attention"] * 32, "linear_attention"),
    ("layer_types", "full_attention", "layer_types"),
    ("shared_expert_intermediate_size", -1, "shared_expert_intermediate_size"),
    ("shared_expert_intermediate_size", "abc", "shared_expert_intermediate_size"),
    ("n_shared_experts", -2, "n_shared_experts"),
    ("moe_layer_freq", [1, 0], "moe_layer_freq"),
    ("moe_layer_freq", ["a"] * 32, "moe_layer_freq"),
    ("moe_layer_freq", 0, "moe_layer_freq"),
    ("full_attention_interval", 4, "full_attention_interval"),
    ("linear_num_key_heads", 16, "linear_num_key_heads"),
    ("hybrid_override_pattern", "M-M-M*", "hybrid_override_pattern"),
    ("quantization_config", {"quant_method": "hqq"}, "quant_method"),
    ("quantization_config", "fp8", "quantization_config"),
    ("quantization_config", {"quant_method": "compressed-tensors", "config_groups": {
        "g0": {"weights": {"type": "float", "num_bits": 6}}}}, "config_groups"),
    ("quantization_config", {"quant_method": "gptq", "bits": 3}, "gptq"),
    ("head_dim", -1, "head_dim"),
    ("head_dim", "abc", "head_dim"),
    ("decoder_sparse_step", 0, "decoder_sparse_step"),
    ("first_k_dense_replace", -1, "first_k_dense_replace"),
    ("mlp_only_layers", "abc", "mlp_only_layers"),
    ("mlp_only_layers", [-1], "mlp_only_layers"),
    ("interleave_moe_layer_step", 0, "interleave_moe_layer_step"),
]


@pytest.mark.parametrize("field, value, needle", CONFIG_CASES,
                         ids=[f"{f}={v!r}" for f, v, _ in CONFIG_CASES])
@pytest.mark.parametrize("command", ["predict", "model show"])
def test_bad_config_field(field, value, needle, command, tmp_path):
    cfg = copy.deepcopy(MIXTRAL)
    cfg[field] = value
    path = tmp_path / "cfg" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(cfg))  # NaN is written as the NaN token Python's json reads back
    args = ["predict", "-m", str(path), "-H", "dgx-h100"] if command == "predict" else ["model", "show", str(path)]
    line = refused(args, tmp_path, str(needle))
    assert "config.json" in line


CONFIG_FILES = {  # whole-file problems
    "not UTF-8": NOT_UTF8,
    "malformed": b'{"hidden_size": 4096,,}',
    "a list": b"[1, 2, 3]",
    "empty": b"",
    "null": b"null",
    "nested too deep": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("name", list(CONFIG_FILES))
def test_bad_config_file(name, tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(CONFIG_FILES[name])
    refused(["predict", "-m", str(path), "-H", "dgx-h100"], tmp_path, "config.json")


# -------------------------------------------------------------------------------------- hardware YAML
GPU = {
    "id": "my-gpu", "kind": "accelerator", "name": "My GPU", "vendor": "Me",
    "memory": {"type": "HBM3",
               "capacity_bytes": {"value": 80e9, "as_published": "80 GB", "source": "my-spec", "kind": "vendor-spec"},
               "bandwidth_bytes_per_s": {"value": 3.35e12, "as_published": "3.35 TB/s", "source": "my-spec",
                                         "kind": "vendor-spec"}},
    "peak_flop_per_s": {"bf16": {"value": 989e12, "as_published": "989 TFLOPS", "source": "my-spec",
                                 "kind": "vendor-spec"}},
    "tdp_w": {"value": 700.0, "as_published": "700 W", "source": "my-spec", "kind": "vendor-spec"},
}
SOURCE = {"my-spec": {"title": "my datasheet", "url": "https://example.com/my-gpu.pdf"}}


def _bw(**kw):
    return {"memory": {**GPU["memory"], "bandwidth_bytes_per_s": {**GPU["memory"]["bandwidth_bytes_per_s"], **kw}}}


def _flops(**kw):
    return {"peak_flop_per_s": {"bf16": {**GPU["peak_flop_per_s"]["bf16"], **kw}}}


HW_CASES = {  # what is changed in the accelerator -> the field the error names
    "bandwidth 0": (_bw(value=0.0, as_published="0 TB/s"), "bandwidth_bytes_per_s"),
    "bandwidth 1e-300": (_bw(value=1e-300, as_published="1e-300 B/s"), "bandwidth_bytes_per_s"),
    "bandwidth negative": (_bw(value=-1.0, as_published="-1 B/s"), "bandwidth_bytes_per_s"),
    "bandwidth inf": (_bw(value=float("inf")), "bandwidth_bytes_per_s"),
    "bandwidth nan": (_bw(value=NAN), "bandwidth_bytes_per_s"),
    "bandwidth text": (_bw(value="fast"), "bandwidth_bytes_per_s"),
    "bandwidth wrong unit": (_bw(as_published="3.35 TFLOPS"), "bandwidth_bytes_per_s"),
    "bandwidth 1e40": (_bw(value=1e40, as_published="1e28 TB/s"), "bandwidth_bytes_per_s"),
    "flops 0": (_flops(value=0.0, as_published="0 TFLOPS"), "peak_flop_per_s"),
    "flops 1e-300": (_flops(value=1e-300, as_published="1e-300 FLOPS"), "peak_flop_per_s"),
    "formula x**1000": (_flops(kind="derived", formula="x ** 1000"), "peak_flop_per_s"),
    "formula x/0": (_flops(kind="derived", formula="x / 0"), "peak_flop_per_s"),
    "formula import": (_flops(kind="derived", formula="__import__('os')"), "peak_flop_per_s"),
    "formula (-x)**0.5": (_flops(kind="derived", formula="(-x) ** 0.5"), "peak_flop_per_s"),
    "no peaks": ({"peak_flop_per_s": {}}, "peak_flop_per_s"),
    "unknown dtype": ({"peak_flop_per_s": {"bf17": GPU["peak_flop_per_s"]["bf16"]}}, "peak_flop_per_s"),
    "capacity text": ({"memory": {**GPU["memory"], "capacity_bytes": "80 GB"}}, "capacity_bytes"),
    "unknown field": ({"colour": "green"}, "colour"),
    "unknown source": (_bw(source="nowhere"), "nowhere"),
    "estimate without reason": (_bw(kind="estimate"), "reason"),
    "id with spaces": ({"id": "My GPU"}, "My GPU"),
    "kind unknown": ({"kind": "gpu"}, "kind"),
    "tdp missing unit": ({"tdp_w": {"value": 700.0, "as_published": "700", "source": "my-spec",
                                    "kind": "vendor-spec"}}, "tdp_w"),
}


def _system(**component) -> dict:
    gpu = {"name": "gpu", "role": "accelerator", "item": "my-gpu", "count": 8, **component}
    return {"id": "my-box", "kind": "system", "name": "My box", "vendor": "Me", "composition_source": "my-spec",
            "components": [gpu]}


SYSTEM_CASES = {  # system component problems (the 50-million-GPU system used to take 3.4 GB)
    "count 5e7": (_system(count=50_000_000), "count"),
    "count 0": (_system(count=0), "count"),
    "count 2.5": (_system(count=2.5), "count"),
    "count text": (_system(count="eight"), "count"),
    "unknown item": (_system(item="nosuch"), "nosuch"),
}


@pytest.mark.parametrize("case", list(HW_CASES))
@pytest.mark.parametrize("command", ["predict", "hw show"])
def test_bad_accelerator(case, command, tmp_path):
    change, needle = HW_CASES[case]
    db = tmp_path / "db"
    write_yaml(db / "accelerators" / "my-gpu.yaml", {**GPU, **change})
    write_yaml(db / "sources" / "mine.yaml", SOURCE)
    args = ["predict", "-m", "mixtral", "-H", "my-gpu"] if command == "predict" else ["hw", "show", "my-gpu"]
    line = refused(["--hardware-db", str(db), *args], tmp_path, needle)
    assert "my-gpu.yaml" in line


@pytest.mark.parametrize("case", list(SYSTEM_CASES))
def test_bad_system(case, tmp_path):
    system, needle = SYSTEM_CASES[case]
    db = tmp_path / "db"
    write_yaml(db / "accelerators" / "my-gpu.yaml", GPU)
    write_yaml(db / "systems" / "my-box.yaml", system)
    write_yaml(db / "sources" / "mine.yaml", SOURCE)
    line = refused(["--hardware-db", str(db), "predict", "-m", "mixtral", "-H", "my-box"], tmp_path, needle)
    assert "my-box.yaml" in line


HW_FILES = {"not UTF-8": NOT_UTF8, "malformed": b"id: [unclosed\n", "a list": b"- 1\n- 2\n", "empty": b"",
            "nested too deep": b"[" * 100_000}


@pytest.mark.parametrize("name", list(HW_FILES))
def test_bad_hardware_file(name, tmp_path):
    db = tmp_path / "db"
    (db / "accelerators").mkdir(parents=True)
    (db / "accelerators" / "broken.yaml").write_bytes(HW_FILES[name])
    refused(["--hardware-db", str(db), "predict", "-m", "mixtral", "-H", "h100"], tmp_path, "broken.yaml")


# --------------------------------------------------------------------------------------------- traces
def _meta(change):
    def edit(folder: Path) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps(change(meta)))
    return edit


def _ids(make):
    def edit(folder: Path) -> None:
        from capsim.traces.format import ARRAYS, content_hash

        ids = np.load(folder / "expert_ids.npy")
        np.save(folder / "expert_ids.npy", make(ids))
        arrays = {name: np.load(folder / f"{name}.npy") for name in ARRAYS}
        meta = json.loads((folder / "meta.json").read_text())
        meta["content_sha256"] = content_hash(arrays)  # a consistent hash: the values themselves must be checked
        (folder / "meta.json").write_text(json.dumps(meta))
    return edit


def _raw(name: str, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


TRACE_CASES = {
    "meta null": (_raw("meta.json", b"null"), "meta.json"),
    "meta list": (_raw("meta.json", b"[]"), "meta.json"),
    "meta not UTF-8": (_raw("meta.json", NOT_UTF8), "meta.json"),
    "meta malformed": (_raw("meta.json", b"{,}"), "meta.json"),
    "meta empty object": (_meta(lambda m: {}), "meta.json"),
    "num_experts text": (_meta(lambda m: {**m, "num_experts": "abc"}), "num_experts"),
    "num_experts negative": (_meta(lambda m: {**m, "num_experts": -1}), "num_experts"),
    "top_k 0": (_meta(lambda m: {**m, "top_k": 0}), "top_k"),
    "top_k above experts": (_meta(lambda m: {**m, "top_k": 1000}), "top_k"),
    "format wrong": (_meta(lambda m: {**m, "format": "something-else"}), "format"),
    "ids 0-d": (_ids(lambda ids: np.array(3, dtype=ids.dtype)), "expert_ids"),
    "ids float": (_ids(lambda ids: ids.astype(np.float32)), "expert_ids"),
    "ids out of range": (_ids(lambda ids: ids + 100), "expert_ids"),
    "ids negative": (_ids(lambda ids: ids.astype(np.int16) - 100), "expert_ids"),
    "ids 2-d": (_ids(lambda ids: ids.reshape(ids.shape[0], -1)), "expert_ids"),
    "ids missing": (lambda folder: (folder / "expert_ids.npy").unlink(), "expert_ids"),
    "ids truncated": (lambda folder: (folder / "expert_ids.npy").write_bytes(
        (folder / "expert_ids.npy").read_bytes()[:100]), "expert_ids"),
    "ids changed, old hash": (lambda folder: np.save(folder / "expert_ids.npy",
                                                      np.load(folder / "expert_ids.npy")[::-1].copy()), "hash"),
}


@pytest.mark.parametrize("case", list(TRACE_CASES))
@pytest.mark.parametrize("command", ["trace stats", "predict", "trace cache"])
def test_bad_trace(case, command, tmp_path):
    edit, needle = TRACE_CASES[case]
    folder = tmp_path / "trace"
    shutil.copytree(REPO / "traces" / "tiny-olmoe-stdlib", folder)
    edit(folder)
    args = {"trace stats": ["trace", "stats", str(folder)],
            "trace cache": ["trace", "cache", str(folder), "--batch", "4", "--capacity", "4"],
            "predict": ["predict", "-m", "olmoe", "-H", "h100", "--trace", str(folder), "--trace-any-model"]}[command]
    refused(args, tmp_path, needle)


# ------------------------------------------------------------------- grids, validation configs, prompts, ...
OTHER_FILES = {  # (file name, contents, command with {f} for the file, needle)
    "grid not UTF-8": ("grid.yaml", NOT_UTF8, "sweep {f}", "grid.yaml"),
    "grid malformed": ("grid.yaml", b"models: [mixtral\n", "sweep {f}", "grid.yaml"),
    "grid a list": ("grid.yaml", b"- mixtral\n", "sweep {f}", "grid.yaml"),
    "grid unknown key": ("grid.yaml", b"models: [mixtral]\nhardware: [h100]\ncolour: red\n", "sweep {f}", "colour"),
    "grid batch text": ("grid.yaml", b"models: [mixtral]\nhardware: [h100]\nbatch: abc\n", "sweep {f}", "batch"),
    "grid batch negative": ("grid.yaml", b"models: [mixtral]\nhardware: [h100]\nbatch: [-1]\n", "sweep {f}", "batch"),
    "grid batch huge": ("grid.yaml", b"models: [mixtral]\nhardware: [h100]\nbatch: [1e400]\n", "sweep {f}", "batch"),
    "grid batch 2**70": ("grid.yaml", f"models: [mixtral]\nhardware: [h100]\nbatch: [{2**70}]\n".encode(),
                         "sweep {f}", "batch"),
    "grid models number": ("grid.yaml", b"models: 5\nhardware: [h100]\n", "sweep {f}", "models"),
    "grid missing": (None, None, "sweep nosuch.yaml", "nosuch.yaml"),
    "validate not UTF-8": ("v.yaml", NOT_UTF8, "validate --config {f}", "v.yaml"),
    "validate malformed": ("v.yaml", b"cpu: [\n", "validate --config {f}", "v.yaml"),
    "validate a list": ("v.yaml", b"- 1\n", "validate --config {f}", "v.yaml"),
    "validate no cpu": ("v.yaml", b"hardware_db: validation/hardware\n", "validate --config {f}", "cpu"),
    "validate cpu list": ("v.yaml", b"hardware_db: x\ncpu: [1]\n", "validate --config {f}", "cpu"),
    "validate cpu no runs": ("v.yaml", b"hardware_db: x\ncpu: {hardware: a, engine: b, dtype: fp32, fit: []}\n",
                             "validate --config {f}", "cpu.runs"),
    "validate no hardware_db": ("v.yaml", b"cpu: {}\n", "validate --config {f}", "hardware_db"),
    "validate published not a mapping": ("v.yaml", b"published: 5\n", "validate --published --config {f}",
                                         "published"),
    "prompts not UTF-8": ("p.txt", NOT_UTF8, "trace collect --model traces/models/tiny-olmoe-stdlib --random-init "
                          "--max-new-tokens 2 --prompts {f} --out t", "p.txt"),
    "prompts empty": ("p.txt", b"\n\n", "trace collect --model traces/models/tiny-olmoe-stdlib --random-init "
                      "--max-new-tokens 2 --prompts {f} --out t", "p.txt"),
    "prompts bad JSONL": ("p.jsonl", b'{"prompt": "a"}\nnot json\n', "trace collect --model "
                          "traces/models/tiny-olmoe-stdlib --random-init --max-new-tokens 2 --prompts {f} --out t", "p.jsonl"),
    "lm-eval not UTF-8": ("r.json", NOT_UTF8, "cap accuracy --import {f}", "r.json"),
    "lm-eval malformed": ("r.json", b"{", "cap accuracy --import {f}", "r.json"),
    "lm-eval a list": ("r.json", b"[]", "cap accuracy --import {f}", "r.json"),
    "radar not UTF-8": ("s.yaml", NOT_UTF8, "cap radar {f}", "s.yaml"),
    "radar malformed": ("s.yaml", b"systems: [\n", "cap radar {f}", "s.yaml"),
    "radar a number": ("s.yaml", b"5\n", "cap radar {f}", "s.yaml"),
    "radar bad devices": ("s.yaml", b"systems:\n- {name: A, model: mixtral, hardware: dgx-h100, devices: -1}\n",
                          "cap radar {f}", "devices"),
    "hw check not UTF-8": ("x.yaml", NOT_UTF8, "hw check {f}", "x.yaml"),
    "model dir without config": (None, None, "model show emptydir", "emptydir"),
}


@pytest.mark.parametrize("case", list(OTHER_FILES))
def test_bad_input_file(case, tmp_path):
    name, body, command, needle = OTHER_FILES[case]
    shutil.copytree(REPO / "traces" / "models", tmp_path / "traces" / "models")
    (tmp_path / "emptydir").mkdir()
    if name is not None:
        (tmp_path / name).write_bytes(body)
    refused(command.format(f=name).split(), tmp_path, needle)


def test_the_file_tables_are_large():
    """With tests/test_bad_flags.py, well over the 300 bad inputs the issue asks for."""
    n = 2 * len(CONFIG_CASES) + len(CONFIG_FILES) + 2 * len(HW_CASES) + len(SYSTEM_CASES) + len(HW_FILES)
    n += 3 * len(TRACE_CASES) + len(OTHER_FILES)
    assert n >= 200


def test_helpers_write_what_they_are_given(tmp_path):
    """The fixtures' writers round-trip (so a case breaks exactly the one thing it names)."""
    assert json.loads(write_json(tmp_path / "a.json", {"x": 1}).read_text()) == {"x": 1}
    import yaml

    assert yaml.safe_load(write_yaml(tmp_path / "a.yaml", GPU).read_text()) == GPU
