"""``capsim cap``: the CAP analysis (cost, accuracy, the CAP radar diagram).

Subcommands load on first use, so ``capsim predict`` does not pay for them at start-up. A new subcommand is one
entry in ``_SUBCOMMANDS`` pointing at its own module.
"""

from __future__ import annotations

import importlib

import click

_SUBCOMMANDS = {
    "accuracy": ("capsim.cli.cap_accuracy", "accuracy_cmd"),
    "cost": ("capsim.cli.cap_cost", "cost_cmd"),
    "radar": ("capsim.cli.cap_radar", "radar_cmd"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(_SUBCOMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        if name not in _SUBCOMMANDS:
            return None
        module, attr = _SUBCOMMANDS[name]
        return getattr(importlib.import_module(module), attr)


@click.group("cap", cls=_LazyGroup)
def cap() -> None:
    """CAP analysis: cost ($/1M tokens, $/h, J/token, capex), accuracy (published scores, lm-eval files) and the
    CAP radar diagram of several systems."""
