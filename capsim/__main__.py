"""``python -m capsim``: the ``capsim`` command."""

from capsim.cli.main import main

main()
