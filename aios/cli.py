"""The ``aios`` command line: ``python -m aios <command> [options]``.

Each subcommand is a :class:`Command` in :data:`COMMANDS`: a name, a one-line help,
a function that declares its arguments and a function that runs it. To add one,
write those two functions and append a ``Command`` to the list::

    def _args_hello(parser):
        parser.add_argument("name")

    def run_hello(args) -> int:
        print(f"hello {args.name}")
        return 0

    COMMANDS.append(Command("hello", "say hello", _args_hello, run_hello))

Keep this module light: import heavy libraries (torch, transformers) inside the
``run_*`` functions, so ``python -m aios --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class CliError(Exception):
    """A user mistake: printed as ``aios <command>: error: <message>``, exit status 2."""


@dataclass(frozen=True)
class Command:
    """One subcommand of ``python -m aios``."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------- make-model


def _args_make_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preset", metavar="PRESET", help="model shape: tiny, small, 0.6b, 1.7b, 4b, 8b, 14b or 32b")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="folder to write the checkpoint into")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default: 0)")
    parser.add_argument("--force", action="store_true", help="write even if OUT_DIR is not empty")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a config field, e.g. --set num_hidden_layers=1 (VALUE is read as JSON if it parses)",
    )


def _parse_overrides(items: list[str]) -> dict:
    """``["num_hidden_layers=1", "dtype=float32"]`` -> ``{"num_hidden_layers": 1, "dtype": "float32"}``."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def run_make_model(args: argparse.Namespace) -> int:
    """Write an offline Qwen3 checkpoint (see :func:`aios.fixtures.make_model`)."""
    from aios.fixtures import PRESETS, make_model

    if args.preset not in PRESETS:
        raise CliError(f"unknown preset {args.preset!r}; choose one of: {', '.join(PRESETS)}")
    out_dir: Path = args.out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not args.force:
        raise CliError(f"{out_dir} is not empty; pass --force to write the checkpoint into it anyway")
    try:
        path = make_model(args.preset, out_dir, seed=args.seed, **_parse_overrides(args.overrides))
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    print(f"wrote {args.preset} checkpoint (seed {args.seed}, {size / 2**20:.1f} MiB) to {path}")
    return 0


# ---------------------------------------------------------------- registry and entry point

#: Every subcommand, in the order ``--help`` lists them.
COMMANDS: list[Command] = [
    Command("make-model", "write an offline Qwen3 checkpoint with random weights", _args_make_model, run_make_model),
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="python -m aios", description="AIOS: a small LLM inference engine for Qwen3.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the chosen command, return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except CliError as exc:
        print(f"python -m aios {args.command}: error: {exc}", file=sys.stderr)
        return 2
