"""The names a flag accepts (engines, weight and KV formats, hardware, models): listed in ``--help`` and offered by
shell completion. Completion is click's: enable it once per shell with

    eval "$(_CAPSIM_COMPLETE=bash_source capsim)"   # zsh: zsh_source, fish: fish_source

(README: "Shell completion"). Everything here is read from the shipped data, so a new engine profile or
hardware entry appears without a code change.
"""

from __future__ import annotations

from click.shell_completion import CompletionItem

from capsim import engines, precision


def _join(names) -> str:
    return ", ".join(names)


ENGINES = [*engines.available(), *engines.ALIASES]
ENGINES_HELP = _join(engines.available()) + f" (aliases: {_join(engines.ALIASES)})"
PRECISIONS = [*precision.PRECISIONS, *precision.ALIASES]
PRECISIONS_HELP = _join(precision.PRECISIONS) + f" (aliases: {_join(precision.ALIASES)})"
KV_HELP = _join(precision.KV_PRECISIONS)


def _items(names, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def complete_engines(ctx, param, incomplete: str) -> list[CompletionItem]:
    return _items(ENGINES, incomplete)


def complete_precisions(ctx, param, incomplete: str) -> list[CompletionItem]:
    return _items(PRECISIONS, incomplete)


def complete_kv_precisions(ctx, param, incomplete: str) -> list[CompletionItem]:
    return _items(precision.KV_PRECISIONS, incomplete)


def complete_hardware(ctx, param, incomplete: str) -> list[CompletionItem]:
    """Ids and aliases of systems, accelerators and CPUs (with --hardware-db's entries when given)."""
    from capsim.hardware import db as hwdb

    root = ctx.find_root() if ctx is not None else None
    try:
        db = hwdb.load((root.params or {}).get("hardware_db") if root is not None else None)
    except Exception:  # completion must never print a traceback into the shell  # noqa: BLE001
        return []
    names = sorted({n for i, it in db.items.items() if it.kind in ("system", "accelerator", "cpu")
                    for n in (i, *it.aliases)})
    return _items(names, incomplete)


def complete_models(ctx, param, incomplete: str) -> list[CompletionItem]:
    from capsim.model.catalogue import entries

    names = sorted({n for mid, e in entries().items() for n in (mid, *e["aliases"])})
    out = _items(names, incomplete)
    return out or [CompletionItem(incomplete, type="file")]  # a config.json path
