"""What every console script shares: one-line errors with exit code 2, logging set-up.

Each CLI is ``main(argv: list[str] | None = None) -> int`` (tests call it in-process) and wraps its body
with :func:`run_cli`, which turns an :class:`AuteurError` into ``error: <message>`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from auteur.errors import AuteurError


class UsageError(AuteurError):
    """A command line that does not parse."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line raises UsageError (one line, exit 2) instead of printing usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def run_cli(body: Callable[[], int | None]) -> int:
    """Run a CLI body; user errors become one line on stderr and exit code 2."""
    try:
        rc = body()
    except AuteurError as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return int(rc or 0)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
