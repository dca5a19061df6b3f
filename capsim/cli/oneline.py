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
    """Turns CapsimError into 'capsim: error: ...' on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        return _invoke_one_line(click.Group, self, ctx)


class CapsimCommand(click.Command):
    """The same for a command run on its own (tests, or embedding in another click app)."""

    def invoke(self, ctx: click.Context):
        return _invoke_one_line(click.Command, self, ctx)
