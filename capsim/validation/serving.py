"""Published serving-benchmark runs of MoE models under load (validation/published/serving/), predicted by
``capsim serve`` (``capsim validate --serving``).

Each row of ``vllm.csv`` is one ``vllm bench serve`` / ``benchmark_serving.py`` result block copied verbatim
(URL and place in its ``source`` column; every statistic as printed, in ms): vLLM on GPUs, the random dataset at
stated lengths or ShareGPT, every request released at once (``--request-rate`` inf), with or without
``--max-concurrency``.
The ``vllm`` profile is fitted on a declared subset that holds none of them (the static published rows of
validation/published/gpu/), so every run is held out.

How a row becomes a ``capsim serve`` run (every choice the sources leave open, written down):

- model: the checkpoint's catalogue entry (DeepSeek-R1 has DeepSeek-V3's architecture); precision: the
  checkpoint's native format (DeepSeek-R1 block FP8, gpt-oss MXFP4 experts, Qwen3-235B bf16 or its -FP8 release);
- hardware: ``gpus`` of the named device (a100-sxm4-80gb, h100-sxm5-80gb, h200-sxm-141gb, mi300x) joined by its own
  NVLink / Infinity Fabric, tensor-parallel over all of them (the serve commands' -tp; 1 without it);
- scheduler: vLLM's server defaults for the device (the profile's ``scheduler`` tiers), or the serve command's
  ``--max-num-seqs`` / ``--max-num-batched-tokens``; other flags (``--max-model-len``, ``--block-size``, compilation
  settings) are not modelled;
- lengths: the random dataset: every request at the run's MEAN lengths (total input tokens / requests; total
  generated tokens / requests): its prompts are fixed-length, but runs without ``--ignore-eos`` stop some outputs
  early, and the block prints only totals; ShareGPT: drawn from capsim's ShareGPT table (``--dataset sharegpt``,
  Llama-3 token counts; the served models' tokenizers count the same prompts within about 1%: 215,312 input tokens
  for gpt-oss's 1,000 prompts against 215,196 for Llama 3.1), outputs at the dataset's lengths (the served
  model may stop earlier);
- expert parallelism: ``--enable-expert-parallel`` puts the experts over all the GPUs (ep = gpus);
- routing: the catalogue's real routing (as ``capsim predict``).
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any

from capsim.errors import CapsimError
from capsim.validation.serving_stats import error, get, summary, summary_lines

FOLDER = "published/serving"
ENGINE = "vllm"
MODELS = {  # the checkpoint the serve command loads -> (catalogue id, precision)
    "deepseek-ai/DeepSeek-R1-0528": ("deepseek-v3", "fp8"), "deepseek-ai/DeepSeek-R1": ("deepseek-v3", "fp8"),
    "openai/gpt-oss-120b": ("gpt-oss-120b", "mxfp4"), "openai/gpt-oss-20b": ("gpt-oss-20b", "mxfp4"),
    "Qwen/Qwen3-235B-A22B-Instruct-2507": ("qwen3-235b-a22b", "bf16"),
    "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8": ("qwen3-235b-a22b", "fp8"),
}
DEVICES = {"/a100.md": "a100-sxm4-80gb", "/h100.md": "h100-sxm5-80gb", "/h200.md": "h200-sxm-141gb",
           "AMD_GPU": "mi300x"}
# statistic -> (CSV column and its unit to SI, capsim serve's key path)
STATS = {
    "ttft_mean": ("mean_ttft_ms", 1e-3, ("ttft_s", "mean")), "ttft_p99": ("p99_ttft_ms", 1e-3, ("ttft_s", "p99")),
    "tpot_mean": ("mean_tpot_ms", 1e-3, ("tpot_s", "mean")), "tpot_p99": ("p99_tpot_ms", 1e-3, ("tpot_s", "p99")),
    "itl_mean": ("mean_itl_ms", 1e-3, ("itl_s", "mean")), "itl_p99": ("p99_itl_ms", 1e-3, ("itl_s", "p99")),
    "e2e_mean": ("mean_e2el_ms", 1e-3, ("e2e_s", "mean")),
    "output_tokens_per_s": ("output_tokens_per_s", 1.0, ("output_tokens_per_s",)),
}
TARGETS = {"mean": 0.25, "p99": 0.35}  # issue 23's targets for the published corpus


def load_rows(root: Path) -> list[dict[str, str]]:
    path = root / FOLDER / "vllm.csv"
    try:
        with open(path, encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except OSError as err:
        raise CapsimError(f"{path}: cannot read the serving corpus ({err.strerror or err})") from None


def scenario_of(row: dict[str, str]) -> dict[str, Any]:
    """The ``capsim serve`` arguments a row stands for (the rules in the module docstring)."""
    m = re.search(r"vllm serve (\S+)", row["serve_command"])
    if m is None or m.group(1) not in MODELS:
        raise CapsimError(f"{FOLDER}/vllm.csv: row {row['id']}: serve_command: no checkpoint capsim maps "
                          f"(expected one of {', '.join(MODELS)})")
    model, prec = MODELS[m.group(1)]
    device = next((d for k, d in DEVICES.items() if k in row["source"]), None)
    if device is None:
        raise CapsimError(f"{FOLDER}/vllm.csv: row {row['id']}: no device found in its source")
    cmd = row["serve_command"]

    def flag(name: str) -> int | None:
        m = re.search(rf"--{name}[ =](\d+)", cmd)
        return int(m.group(1)) if m else None

    n, gpus = int(row["successful"]), int(row["gpus"])
    return {"model": model, "precision": prec, "hardware": device, "devices": gpus,
            "ep": gpus if "--enable-expert-parallel" in cmd else 1,
            "max_num_seqs": flag("max-num-seqs"), "max_batched_tokens": flag("max-num-batched-tokens"),
            "requests": n, "dataset": row["dataset"], "input_len": max(1, round(int(row["total_input_tokens"]) / n)),
            "output_len": max(1, round(int(row["total_generated_tokens"]) / n)),
            "concurrency": int(row["max_concurrency"]) if row["max_concurrency"] else None}


def predict_row(row: dict[str, str], db) -> dict[str, Any]:
    from capsim.predict import Query
    from capsim.scenario import resolve
    from capsim.serve import workload
    from capsim.serve.run import serve

    s = scenario_of(row)
    sharegpt = s["dataset"] == "sharegpt"
    w = workload.build(s["requests"], request_rate=math.inf, concurrency=s["concurrency"],
                       input_len=None if sharegpt else s["input_len"], output_len=None if sharegpt else s["output_len"],
                       dataset="sharegpt" if sharegpt else None)
    q = Query(model=s["model"], hardware=s["hardware"], devices=s["devices"], tp=s["devices"], ep=s["ep"], engine=ENGINE,
              precision=s["precision"], batch=1, input_len=s["input_len"], output_len=s["output_len"],
              check_memory=False)
    return serve(resolve(q, db), w, max_num_seqs=s["max_num_seqs"], max_batched_tokens=s["max_batched_tokens"])


def run(root: Path, db, progress=None) -> dict[str, Any]:
    rows = load_rows(root)
    out = []
    for k, row in enumerate(rows):
        pred = predict_row(row, db)
        meas = {name: float(row[col]) * unit if row.get(col) else None for name, (col, unit, _) in STATS.items()}
        prd = {name: get(pred, path) for name, (_, _, path) in STATS.items()}
        errs = {name: error(meas[name], prd[name]) for name in STATS}
        out.append({"id": row["id"], "scenario": scenario_of(row), "errors": errs, "measured": meas,
                    "predicted": prd, "source": row["source"]})
        if progress:
            progress(k + 1, len(rows))
    return {"runs": out, "summary": summary(out, STATS), "engine": ENGINE}


def markdown(result: dict[str, Any], command: str) -> str:
    lines = ["# Published serving benchmarks under load, predicted by `capsim serve`", "",
             f"Written by `{command}`. Runs: validation/{FOLDER}/vllm.csv (each block verbatim from the URL in its "
             "`source` column; the mapping to capsim's scenario in capsim/validation/serving.py). The `vllm` profile "
             "is fitted on the static published rows of validation/published/gpu/ only, so every run here is held "
             f"out. Targets: means within {TARGETS['mean']:.0%}, p99 within {TARGETS['p99']:.0%}.", "",
             *summary_lines(result["summary"])]
    lines += ["", "| run | model | device x n | requests | lengths (mean) | TTFT mean meas / pred (s) | TPOT mean "
              "(ms) | output tok/s |", "|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        s, m, p = r["scenario"], r["measured"], r["predicted"]
        tpot = "-" if m["tpot_mean"] is None else f"{m['tpot_mean'] * 1e3:.3g} / {p['tpot_mean'] * 1e3:.3g}"
        lines.append(f"| {r['id']} | {s['model']} {s['precision']} | {s['hardware']} x{s['devices']} | {s['requests']}"
                     f"{'' if s['concurrency'] is None else ' (conc ' + str(s['concurrency']) + ')'} | "
                     f"{s['input_len']} / {s['output_len']} | {m['ttft_mean']:.3g} / {p['ttft_mean']:.3g} | {tpot} | "
                     f"{m['output_tokens_per_s']:.4g} / {p['output_tokens_per_s']:.4g} |")
    return "\n".join(lines) + "\n"
