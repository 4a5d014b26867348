"""What every console script shares: one-line errors with exit code 2, logging set-up, help conventions.

Each CLI is ``main(argv: list[str] | None = None) -> int`` (tests call it in-process) and wraps its body
with :func:`run_cli`, which turns an :class:`AuteurError` into ``error: <message>`` on stderr and exit code 2.

Help conventions (checked for every command by ``tests/auteur/test_cli_help.py``): every argument has a help
string, every parser ends its ``--help`` with :func:`examples` (command lines that run as written from a
checkout), a command that picks a preset spells it ``--preset`` (``--config`` is kept as an alias), and
``key=value`` overrides are added with :func:`add_overrides`.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Callable

from auteur.errors import AuteurError


class UsageError(AuteurError):
    """A command line that does not parse."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line raises UsageError (one line, exit 2) instead of printing usage, and the
    description and epilog (the examples) keep their line breaks."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def examples(*lines: str) -> str:
    """An ``epilog`` of example command lines, shown as written at the end of ``--help``."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_overrides(
    parser: argparse.ArgumentParser, example: str, what: str = "the preset's config", note: str = ""
) -> None:
    """The ``key=value ...`` positional of a command with a config: dotted overrides, e.g. ``example``."""
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help=f"dotted overrides of {what}, e.g. {example}" + (f"; {note}" if note else ""),
    )


_OVERRIDE = "override:"  # dest prefix of the options that are another spelling of a key=value override


def add_override_option(parser: argparse.ArgumentParser, flag: str, key: str, help: str, **kwargs) -> None:
    """An option that is another spelling of the ``key=value`` override ``key`` (``--out DIR`` for ``out=DIR``);
    :func:`parse_with_overrides` appends it to ``overrides``. Giving both spellings is a usage error."""
    kwargs.setdefault("metavar", key.upper().replace(".", "_"))
    parser.add_argument(flag, dest=_OVERRIDE + key, help=help, **kwargs)


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, but ``key=value`` overrides may come anywhere, also after options: argparse stops
    filling a positional list at the first option and leaves the rest over, so they are appended to the
    parsed ``overrides`` here. Anything else left over (an unknown option, a stray word, an override to a
    command without ``overrides``) is a usage error."""
    args, extra = parser.parse_known_args(argv)
    bad = [x for x in extra if x.startswith("-") or "=" not in x or not hasattr(args, "overrides")]
    if bad:
        raise UsageError(f"{parser.prog}: unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    for dest in [d for d in vars(args) if d.startswith(_OVERRIDE)]:
        value, key = getattr(args, dest), dest.removeprefix(_OVERRIDE)
        delattr(args, dest)
        if value is None:
            continue
        if any(o.partition("=")[0].strip() == key for o in args.overrides):
            raise UsageError(f"{parser.prog}: {key} is given twice, as {key}=... and as an option; give it once")
        args.overrides = [*args.overrides, f"{key}={value}"]
    return args


def say(line: str) -> None:
    """Write ``line`` and its newline to stderr in one write: ``print`` makes two on Python's unbuffered stderr, so
    the lines of processes sharing one stderr (``torchrun``) could interleave mid-line."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run_cli(body: Callable[[], int | None]) -> int:
    """Run a CLI body; user errors become one line on stderr and exit code 2."""
    try:
        rc = body()
    except AuteurError as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        say(f"error: {msg}")
        return 2
    except KeyboardInterrupt:
        say("interrupted; rerun the same command to resume")
        return 130
    except ValueError as e:
        if not str(e).startswith("embedded null"):
            raise
        say("error: a path contains a NUL character (\\x00); no file can have that name")
        return 2
    except OSError as e:
        if e.errno not in _USER_OS_ERRORS:
            raise  # anything else is a bug worth its traceback
        where = f" {e.filename}" if e.filename else ""
        say(f"error: cannot write{where}: {e.strerror or e}")
        return 2
    return int(rc or 0)


# what the user's machine can cause (not the code): a read-only mount, no permission, a full or over-quota disk
_USER_OS_ERRORS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) on stderr; under torchrun / accelerate launch, processes other than the main
    one log warnings and errors only, tagged with their rank (their INFO lines would repeat the main one's)."""
    import os

    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO
    fmt = "%(levelname)s %(name)s: %(message)s"
    if rank:
        level, fmt = max(level, logging.WARNING), f"[rank {rank}] {fmt}"
    logging.basicConfig(level=level, format=fmt)
