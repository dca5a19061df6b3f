"""CapsimError as one line on stderr and exit code 2, for the group and for commands invoked alone."""

from __future__ import annotations

import click

from capsim.errors import CapsimError


class OneLineUsage(click.UsageError):
    """click's usage error (unknown option, bad value, missing argument) in capsim's style: one line on stderr,
    ``capsim: error: <command>: <what>; see '<command> --help'``, exit code 2."""

    def __init__(self, err: click.UsageError):
        path = err.ctx.command_path if err.ctx is not None else "capsim"
        text = " ".join(err.format_message().split())
        super().__init__(f"{path}: {text} (see '{path} --help')", err.ctx)

    def show(self, file=None) -> None:
        click.echo(f"capsim: error: {self.message}", err=True)


def _invoke_one_line(base, self, ctx: click.Context):
    try:
        return base.invoke(self, ctx)
    except CapsimError as err:
        click.echo(f"capsim: error: {err}", err=True)
        ctx.exit(err.exit_code)
    except OneLineUsage:
        raise
    except click.UsageError as err:
        raise OneLineUsage(err) from None


def _make_context_one_line(base, self, *args, **kwargs):
    try:
        return base.make_context(self, *args, **kwargs)
    except OneLineUsage:
        raise
    except click.UsageError as err:
        raise OneLineUsage(err) from None


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

    def make_context(self, *args, **kwargs):
        return _make_context_one_line(click.Group, self, *args, **kwargs)


class CapsimCommand(click.Command):
    """The same for a command run on its own (tests, or embedding in another click app)."""

    def invoke(self, ctx: click.Context):
        return _invoke_one_line(click.Command, self, ctx)

    def make_context(self, *args, **kwargs):
        return _make_context_one_line(click.Command, self, *args, **kwargs)
