"""The run file of ``capsim measure`` (format ``capsim-run``, version 1): what it holds, writing and reading it.

Torch-free (numpy only; :func:`_full_config` imports transformers when called), so the validation path reads
run files without the measurement's dependencies. A run file is one JSON object: ``format``, ``version``, the
model (the full config that was run, its hash, family, experts), the device, ``engine``, ``dtype``, the method,
the provenance, ``notes`` and ``measurements``, each with at least :data:`MEASUREMENT_KEYS` (timing statistics
from :func:`_stats`, routing from :func:`_activated`) and ``input_len`` (prefill) or ``context`` (decode).
:func:`read_run` checks the format and version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from capsim.errors import CapsimError

RUN_FORMAT = "capsim-run"
RUN_VERSION = 1
ENGINE = "hf-eager"
DTYPES = ("float32", "bfloat16")
MEASUREMENT_KEYS = ("phase", "batch", "median_s", "p10_s", "p90_s", "repeats", "samples_s",
                    "activated_experts_per_layer", "activated_by_layer")
# Config keys that describe the software that wrote a config, not the architecture: left out of the run
# file's config so its hash is the same across transformers versions and dtypes.
_NOT_ARCHITECTURE = ("transformers_version", "dtype", "torch_dtype", "_name_or_path", "architectures", "auto_map")


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return str(x)


def _stats(samples: list[float]) -> dict[str, Any]:
    a = np.asarray(samples, dtype=float)
    return {"median_s": float(np.median(a)), "p10_s": float(np.percentile(a, 10)),
            "p90_s": float(np.percentile(a, 90)), "repeats": len(samples), "samples_s": [float(s) for s in a]}


def _activated(ids: np.ndarray) -> dict[str, Any]:
    """ids (tokens, moe_layers, top_k) -> distinct experts per MoE layer and their mean."""
    per_layer = [int(np.unique(ids[:, layer, :]).size) for layer in range(ids.shape[1])]
    return {"activated_experts_per_layer": float(np.mean(per_layer)), "activated_by_layer": per_layer}


def _full_config(config: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The config the model was built from, as a config.json holds it: the family's defaults filled in (head_dim,
    rope parameters ...), without the generic PretrainedConfig fields left at their defaults (id2label,
    return_dict ...) and without the software fields of _NOT_ARCHITECTURE."""
    import transformers

    base = json.loads(json.dumps(transformers.PretrainedConfig().to_dict(), default=_json_default))
    full = json.loads(json.dumps(config.to_dict(), default=_json_default))
    return {k: v for k, v in full.items()
            if k not in _NOT_ARCHITECTURE and not (k in base and k not in given and v == base[k])}


def write_run(path: str | Path, run: dict[str, Any]) -> Path:
    """Write a run file atomically (temporary sibling, then one rename); an existing file is replaced only when it
    is a capsim JSON result (:mod:`capsim.outputs`)."""
    from capsim import atomic, outputs

    outputs.check_replace(path, "run", "--out")
    text = json.dumps(run, indent=1, default=_json_default) + "\n"
    return atomic.write_text(path, text)


def read_run(path: str | Path) -> dict[str, Any]:
    """A run file, checked for the format and version; CapsimError otherwise."""
    path = Path(path)
    try:
        run = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CapsimError(f"{path}: unreadable run file ({err})") from None
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT or run.get("version") != RUN_VERSION:
        raise CapsimError(f"{path}: not a {RUN_FORMAT} version {RUN_VERSION} file")
    return run
