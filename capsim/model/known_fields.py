"""Every config.json field capsim knows, per model type: the fields the transformers config class of that type
reads (its defaults, dumped at catalogue build time), the generic ``PretrainedConfig`` fields, and those the
catalogue's own configs carry. A field outside them may change a weight shape capsim does not build, so it is an
error naming it rather than something silently ignored (``capsim/catalogue/config_fields.json``, written by
``scripts/build_catalogue.py``; read without torch or transformers).

A model type capsim has no record of is checked against every type's fields together.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from capsim.errors import CapsimError

FIELDS_JSON = Path(__file__).parents[1] / "catalogue" / "config_fields.json"
# Sub-configs read as a whole elsewhere, or carried by checkpoints as metadata, whose inner keys are not shapes
NESTED = ("quantization_config", "rope_scaling", "rope_parameters", "text_config", "vision_config", "ffn_config",
          "attn_config", "auto_map", "compression_config", "id2label", "label2id", "task_specific_params")


@cache
def _fields() -> tuple[frozenset[str], dict[str, frozenset[str]], frozenset[str]]:
    data = json.loads(FIELDS_JSON.read_text())
    by_type = {k: frozenset(v) for k, v in data["by_model_type"].items()}
    every = frozenset().union(*by_type.values()) if by_type else frozenset()
    return frozenset(data["generic"]), by_type, every


def unknown(cfg: dict[str, Any], model_type: str, also: tuple[str, ...] = ()) -> list[str]:
    """The top-level fields of ``cfg`` (flattened) capsim does not know for ``model_type``."""
    generic, by_type, every = _fields()
    known = generic | by_type.get(model_type, every) | set(NESTED) | set(also)
    return sorted(k for k in cfg if k not in known and not k.startswith("_"))


def check(cfg: dict[str, Any], model_type: str, also: tuple[str, ...] = ()) -> None:
    bad = unknown(cfg, model_type, also)
    if bad:
        raise CapsimError(f"config.json: field(s) {', '.join(bad)} are not fields capsim knows for model_type "
                          f"{model_type or '(none)'} (they may change weight shapes it does not build); remove "
                          "them if they do not")
