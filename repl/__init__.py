"""PopQL's command line (``popql``) and, later, its interactive shell."""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the ``popql`` command line (see :mod:`popql.repl.cli`)."""
    from .cli import main as cli_main

    return cli_main(argv)
