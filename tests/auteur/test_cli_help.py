"""``--help`` of every console script and every subcommand: every argument explained, examples at the end.

The scripts come from pyproject.toml's ``[project.scripts]`` and the subcommands from walking each parser's
subparsers, so a new script or subcommand is checked without editing this file. Each parser must:

- give every argument (positional, option, ``key=value`` overrides, each subcommand) a help text;
- end its ``--help`` with an ``examples:`` section (kept as written, line breaks and all) holding a command
  line that runs this very command;
- spell a preset ``--preset`` wherever the old ``--config`` is accepted (the same option);

and every example line that calls one of the console scripts must parse (it is not run here).
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from functools import cache
from unittest import mock

import pytest

from auteur.cliutil import ArgumentParser, UsageError, parse_with_overrides
from tests.conftest import REPO

SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def _main(script: str) -> Callable[[list[str]], int]:
    module, _, func = SCRIPTS[script].partition(":")
    return getattr(importlib.import_module(module), func)


def _help(script: str, path: tuple[str, ...]) -> tuple[str, argparse.ArgumentParser]:
    """What ``SCRIPT *PATH --help`` prints (run in-process), and the script's top-level parser, caught as it
    parses (the first parser whose ``parse_known_args`` runs; ``parse_args`` goes through it too)."""
    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_known_args

    def spy(self, args=None, namespace=None):
        seen.append(self)
        return original(self, args, namespace)

    out = io.StringIO()
    with mock.patch.object(argparse.ArgumentParser, "parse_known_args", spy), redirect_stdout(out):
        with pytest.raises(SystemExit) as exit_info:
            _main(script)([*path, "--help"])
    assert exit_info.value.code in (0, None), f"{script} {' '.join(path)} --help exited {exit_info.value.code}"
    assert seen, f"{script}: main() parsed no command line with argparse"
    return out.getvalue(), seen[0]


@cache
def _root(script: str) -> argparse.ArgumentParser:
    return _help(script, ())[1]


def _walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """The parser and, depth first, every subcommand's parser under it (an alias only once)."""
    yield path, parser
    done: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in done:
                    done.add(id(sub))
                    yield from _walk(sub, (*path, name))


def _command_lines(epilog: str) -> list[list[str]]:
    """The example command lines of an epilog as argv lists (backslash continuations joined, comments dropped)."""
    body = epilog.split("\n", 1)[1] if "\n" in epilog else ""
    return [shlex.split(line, comments=True) for line in body.replace("\\\n", " ").splitlines() if line.strip()]


def _problems(parser: argparse.ArgumentParser, help_text: str) -> list[str]:
    """What is wrong with one parser's documentation (empty: nothing)."""
    prog, bad = parser.prog, []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.metavar or action.dest
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
            bad.append(f"{prog}: argument {name} has no help")
        if isinstance(action, argparse._SubParsersAction):
            documented = {id(action.choices[a.dest]) for a in action._choices_actions if (a.help or "").strip()}
            for sub_name, sub in action.choices.items():
                if id(sub) not in documented:
                    bad.append(f"{prog}: subcommand {sub_name} has no help (add_parser(..., help=...))")
        if "--config" in action.option_strings and "--preset" not in action.option_strings:
            bad.append(f"{prog}: {name} takes --config but not --preset (add_argument('--preset', '--config', ...))")
        if action.dest == "overrides" and "e.g." not in (action.help or ""):
            bad.append(f"{prog}: the key=value help gives no example (e.g. train.max_steps=100)")
    epilog = (parser.epilog or "").rstrip()
    if not re.match(r"examples?:\n", epilog):
        bad.append(f"{prog}: no epilog of examples (epilog=examples(...) of auteur.cliutil)")
    elif not help_text.rstrip().endswith(epilog):
        bad.append(f"{prog}: --help does not end with the examples as written (formatter_class=RawDescription...)")
    elif not any(argv[: len(prog.split())] == prog.split() for argv in _command_lines(epilog)):
        bad.append(f"{prog}: no example runs `{prog}`")
    return bad


def _example_errors(epilog: str) -> list[str]:
    """The example lines that call a console script but do not parse."""
    errors = []
    for argv in _command_lines(epilog):
        if argv and argv[0] in SCRIPTS:
            try:
                parse_with_overrides(_root(argv[0]), argv[1:])
            except (UsageError, SystemExit) as e:
                errors.append(f"example `{shlex.join(argv)}` does not parse: {e}")
    return errors


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_command_documents_every_argument_and_ends_with_examples(script: str) -> None:
    problems = []
    for path, parser in _walk(_root(script)):
        text, _ = _help(script, path)
        problems += _problems(parser, text)
        problems += _example_errors(parser.epilog or "")
    assert not problems, "\n".join(problems)


def test_the_subcommands_are_found_by_walking_the_parsers() -> None:
    found = {parser.prog for script in SCRIPTS for _, parser in _walk(_root(script))}
    for prog in ("cookgen build youcook2", "cookgen bank", "director plan", "auteur compare", "auteur run"):
        assert prog in found
    assert "auteur compare" in _help("auteur", ("compare",))[0]


def test_the_check_catches_an_argument_without_help_and_a_missing_example() -> None:
    p = ArgumentParser(prog="tool", epilog="examples:\n  tool go --fast")
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser, help="what to do")
    go = sub.add_parser("go", help="go", epilog="examples:\n  other go")
    go.add_argument("--fast")
    go.add_argument("--config", help="a preset")
    go.add_argument("overrides", nargs="*", metavar="key=value", help="overrides")
    sub.add_parser("stop")  # no help, no examples
    problems = [x for path, parser in _walk(p) for x in _problems(parser, parser.format_help())]
    assert problems == [
        "tool: subcommand stop has no help (add_parser(..., help=...))",
        "tool go: argument --fast has no help",
        "tool go: --config takes --config but not --preset (add_argument('--preset', '--config', ...))",
        "tool go: the key=value help gives no example (e.g. train.max_steps=100)",
        "tool go: no example runs `tool go`",
        "tool stop: no epilog of examples (epilog=examples(...) of auteur.cliutil)",
    ]
    assert _problems(p, p.format_help()) == ["tool: subcommand stop has no help (add_parser(..., help=...))"]


def test_preset_and_config_are_one_option_and_out_seed_spell_the_overrides() -> None:
    from cookgen.cli import _parser as cookgen_parser
    from director.cli import _parser as director_parser

    for argv in (
        ["bank", "clips", "--out", "b", "--config", "tiny"],
        ["bank", "clips", "--out", "b", "--preset", "tiny"],
    ):
        assert parse_with_overrides(cookgen_parser(), argv).config == "tiny"
    args = parse_with_overrides(
        director_parser(), ["train", "--preset", "tiny", "data=d", "--out", "r", "--seed", "3"]
    )
    assert args.preset == "tiny" and args.overrides == ["data=d", "out=r", "seed=3"]
    assert not any(k.startswith("override:") for k in vars(args))
    with pytest.raises(UsageError, match="out is given twice"):
        parse_with_overrides(director_parser(), ["train", "out=a", "--out", "b"])
