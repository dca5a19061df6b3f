"""``capsim trace``: collect, analyse and synthesise expert-activation traces.

Subcommands load on first use, so ``capsim predict`` does not pay for them at start-up.
"""

from __future__ import annotations

import importlib

import click

_SUBCOMMANDS = {
    "cache": ("capsim.cli.trace_cache", "cache_cmd"),
    "collect": ("capsim.cli.trace_collect", "collect_cmd"),
    "stats": ("capsim.cli.trace_analyse", "stats_cmd"),
    "synth": ("capsim.cli.trace_analyse", "synth_cmd"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _SUBCOMMANDS:
            return None
        module, attr = _SUBCOMMANDS[name]
        return getattr(importlib.import_module(module), attr)


@click.group("trace", cls=_LazyGroup)
def trace() -> None:
    """Expert-activation traces: collect from a model, analyse, synthesise (format: traces/README.md)."""
