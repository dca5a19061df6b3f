"""Import lm-evaluation-harness result files (``lm_eval --output_path``) as rows of the accuracy table.

Format (lm-evaluation-harness 0.4): a JSON object with ``results`` = {task: {"acc,none": 0.70,
"acc_stderr,none": 0.003, "alias": ...}} (a key is "metric,filter"), ``n-shot`` / ``configs`` (few-shot
counts), ``versions``, and the model in ``model_name`` or ``config.model_args`` ("pretrained=ORG/NAME,
dtype=bfloat16"). Metrics that are not accuracies are skipped: values outside [0, 1], metrics the file marks
lower-is-better (``higher_is_better``), perplexities and bits per byte.
A file of another format is a :class:`CapsimError` naming the file and the keys expected.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from capsim.cap.accuracy import Score, model_key
from capsim.errors import CapsimError

EXPECTED = ("an lm-evaluation-harness results JSON: an object with 'results' ({task: {'acc,none': 0.7, ...}}) "
            "and 'model_name' or 'config' (model_args 'pretrained=...')")
EVALUATOR = "lm-evaluation-harness (imported file)"
_DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "half": "fp16", "fp16": "fp16",
           "float32": "fp32", "float": "fp32", "fp32": "fp32"}
_NOT_ACCURACY = ("perplexity", "bits_per_byte")  # lower-is-better metrics, never an accuracy
_QUANT = {"fp8": "fp8", "awq": "int4", "gptq": "int4", "mxfp4": "mxfp4", "nvfp4": "nvfp4"}


def _fail(path: Path, what: str) -> CapsimError:
    return CapsimError(f"{path}: {what}; expected {EXPECTED}")


def _model_args(config: dict[str, Any]) -> dict[str, str]:
    args = config.get("model_args")
    if isinstance(args, dict):
        return {str(k): str(v) for k, v in args.items()}
    if isinstance(args, str):
        return dict(part.split("=", 1) for part in args.split(",") if "=" in part)
    return {}


def _precision(config: dict[str, Any]) -> tuple[str, str]:
    """(capsim precision name or 'unknown', how it was found)."""
    args = _model_args(config)
    quant = args.get("quantization", "").lower()
    if quant in _QUANT:
        return _QUANT[quant], f"lm-eval config model_args quantization={quant}"
    if args.get("load_in_4bit", "").lower() == "true" or args.get("load_in_8bit", "").lower() == "true":
        return "unknown", "bitsandbytes quantization (no capsim precision for it)"
    for key, value in (("dtype", args.get("dtype", "")), ("model_dtype", str(config.get("model_dtype", "")))):
        name = value.lower().removeprefix("torch.")
        if name in _DTYPES:
            return _DTYPES[name], f"lm-eval config {key}={value}"
    return "unknown", "the file does not state the precision"


def _shots(data: dict[str, Any], task: str) -> int | None:
    n = (data.get("n-shot") or {}).get(task)
    if n is None:
        n = ((data.get("configs") or {}).get(task) or {}).get("num_fewshot")
    return int(n) if isinstance(n, int | float) and not isinstance(n, bool) else None


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CapsimError(f"{path}: cannot read the file ({getattr(err, 'strerror', None) or err})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _fail(path, f"not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise _fail(path, "no 'results' object at the top level")
    if not data["results"]:
        raise _fail(path, "'results' is empty")
    return data


def load_lm_eval(path: str | Path) -> list[Score]:
    """The accuracy rows of one lm-evaluation-harness results file."""
    path = Path(path)
    data = _read(path)
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    raw_model = data.get("model_name") or _model_args(config).get("pretrained")
    if not raw_model:
        raise _fail(path, "no model name ('model_name', or 'pretrained=' in config.model_args)")
    model = model_key(str(raw_model))
    precision, basis = _precision(config)
    rows: list[Score] = []
    for task, metrics in data["results"].items():
        if not isinstance(metrics, dict):
            raise _fail(path, f"results.{task} is not an object of 'metric,filter' scores")
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key.split(",", 1)[0]:
                continue
            v = _number(value)
            if v is None or not 0.0 <= v <= 1.0:
                continue
            metric, filt = key.split(",", 1)
            better = ((data.get("higher_is_better") or {}).get(task) or {}).get(metric)
            if better is False or any(word in metric for word in _NOT_ACCURACY):
                continue
            stderr = _number(metrics.get(f"{metric}_stderr,{filt}"))
            rows.append(Score(model=model, checkpoint=str(raw_model), precision=precision, precision_basis=basis,
                              benchmark=str(task), metric=metric if filt == "none" else f"{metric} ({filt})", value=v,
                              as_published=f"{key}: {value}", source=str(path), evaluator=EVALUATOR,
                              shots=_shots(data, task), stderr=stderr))
    if not rows:
        raise _fail(path, "'results' holds no 'metric,filter' score between 0 and 1 (such as 'acc,none')")
    return rows
