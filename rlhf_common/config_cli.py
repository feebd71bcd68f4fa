"""Command-line flags from a config dataclass (one flag per field, its docstring as the help), and exit codes.

Each ``rlhf-gym`` subcommand maps its flags onto a config dataclass; deriving the flags
keeps every default and description in one place, the dataclass. Flags are the field names
with dashes (``learning_rate`` -> ``--learning-rate``). Every command exits through
:func:`run_command`: 2 for a usage or data error, 1 for a failure while running.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string literal under each field), inherited ones too."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's docstring of a field replaces its base's
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def add_config_args(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    """Add ``--field-name`` for every init field of dataclass ``cls``.

    A field's type is str, int, float, bool, a Literal, or a settings class whose
    ``parse(text)`` classmethod reads it from one flag value (``--lora r=16,alpha=32``).
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude:
            continue
        kind, choices = _scalar_type(hints[f.name], cls, f.name)
        has_default = f.default is not dataclasses.MISSING
        flag = "--" + f.name.replace("_", "-")
        help_ = docs.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        if has_default:
            help_ += f" (default: {f.default})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        else:
            parser.add_argument(
                flag, type=kind, choices=choices, required=not has_default,
                default=f.default if has_default else None, help=help_,
            )


def config_from_args(cls: type[T], args: argparse.Namespace, **extra: Any) -> T:
    """Build ``cls`` from the parsed flags added by :func:`add_config_args`, plus ``extra`` fields."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**values, **extra)


def parse_field(cls: type, name: str, text: str, where: str) -> Any:
    """``text`` as a value of dataclass ``cls``'s field ``name``, typed as its ``--flag`` would be.

    Also for settings given as ``key=value`` text (``--agent-settings rloo.learning_rate=3e-4``):
    bools are ``true``/``false``, optional fields take ``none``. ``where`` starts the error message.
    """
    hint = typing.get_type_hints(cls)[name]
    if text.lower() == "none" and type(None) in typing.get_args(hint):
        return None
    try:
        kind, choices = _scalar_type(hint, cls, name)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(f"{where}: {name} is true or false.")
        return text.lower() == "true"
    try:
        value = kind(text)
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise ValueError(f"{where}: {name} must be a {getattr(kind, '__name__', 'valid value')} ({e}).") from None
    if choices is not None and value not in choices:
        raise ValueError(f"{where}: {name} must be one of {', '.join(map(str, choices))}.")
    return value


def _scalar_type(hint: Any, cls: type, name: str) -> tuple[Any, list[Any] | None]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is typing.Literal:
        choices = list(typing.get_args(hint))
        return type(choices[0]), choices
    if hint in (str, int, float, bool):
        return hint, None
    if isinstance(hint, type) and callable(getattr(hint, "parse", None)):
        return _parse_with(hint.parse), None
    raise TypeError(f"{cls.__name__}.{name}: type {hint} has no command-line form; exclude the field.")


def _parse_with(parse: Any) -> Any:
    """``parse`` as an argparse type whose ValueError message reaches the user (not "invalid parse value")."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    return convert


EXIT_USAGE = 2
"""Exit code of a usage or data error: bad flags, a bad input file, settings that conflict."""
EXIT_FAILURE = 1
"""Exit code of a failure while running: a NaN in training, a crashed engine, a full disk."""


def run_command(prog: str, main: Callable[[], Any]) -> int:
    """Run a command's body with the package's one exit-code rule; errors print as ``prog: message``.

    2 for a usage or data error (``ValueError``, which includes ``DataError``; a missing input
    file), 1 for a failure while running (``FloatingPointError``, ``RuntimeError``, ``OSError``),
    0 on success. Anything else is a bug and keeps its traceback.
    """
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (FloatingPointError, RuntimeError, OSError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def config_command(argv: Sequence[str] | None, prog: str, description: str, cls: type[T],
                   body: Callable[[T], Any]) -> int:
    """The whole ``cli(argv)`` of a command whose flags are the fields of ``cls``.

    Parses ``argv``, builds the config (its ``__post_init__`` checks become usage errors) and
    runs ``body(config)``, all under :func:`run_command`'s exit-code rule.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_args(parser, cls)
    args = parser.parse_args(argv)
    return run_command(prog, lambda: body(config_from_args(cls, args)))
