"""CapsimError as one line on stderr and exit code 2, for the group and for commands invoked alone."""

from __future__ import annotations

import click

from capsim.errors import CapsimError


def _invoke_one_line(base, self, ctx: click.Context):
    try:
        return base.invoke(self, ctx)
    except CapsimError as err:
        click.echo(f"capsim: error: {err}", err=True)
        ctx.exit(err.exit_code)


class CapsimGroup(click.Group):
    """Turns CapsimError into 'capsim: error: ...' on stderr and exit code 2. Subcommands given in ``lazy``
    (name -> "module:attribute") are imported only when invoked or listed, so that ``capsim predict`` does not
    pay for the imports of every other command."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str):
        if name in self.lazy and name not in self.commands:
            import importlib

            module, attr = self.lazy[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        return _invoke_one_line(click.Group, self, ctx)


class CapsimCommand(click.Command):
    """The same for a command run on its own (tests, or embedding in another click app)."""

    def invoke(self, ctx: click.Context):
        return _invoke_one_line(click.Command, self, ctx)
