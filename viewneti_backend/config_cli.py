"""Command-line options generated from config dataclasses: each default and help text is written once.

A config field becomes an option by carrying :func:`option` metadata; its help text lives there and
its default is the field's::

    steps: int = field(default=3000, metadata=option("optimizer steps"))

- **Help** says what the value means, never the default: ``--help`` appends "(default: 3000)" from
  the field. A ``bool`` option's help says what its flag does.
- **Flag**: ``--`` + the field name with ``-`` for ``_``, or ``flag=`` where the command line says
  it otherwise (``n_objects`` -> ``--objects``). A ``bool`` field that defaults to True is the flag
  ``--no-<name>`` (it stores False), one that defaults to False the flag ``--<name>``.
- **Type** from the annotation: ``int``, ``float``, ``str``, ``X | None`` (the option may be left
  out), ``list[int]`` or ``tuple[float, float]`` (comma-separated: ``0,1`` or ``3.2,4.0``);
  ``choices=`` takes a registry (``PARAMETERIZATIONS``: its keys) and ``parse=`` a parser of the
  field's own where the type is not enough.
- A field that holds another config (``PretrainConfig.train``) exposes the options :func:`nested`
  names, with the defaults of the field's default instance (``pretrain_training()``'s 6000 steps,
  not ``TrainConfig``'s 3000).
- A field without a default (``PretrainRun.data``) is an option only where the command makes it
  ``required``.

:func:`add_options` puts a config's options on a parser (all of them, or ``only`` some, a few of them
``required``); :func:`config_from_args` builds the config back from the parsed arguments. A field
without :func:`option` metadata is no option and keeps its default. The parsed value's name is the
field's, so a command's own code reads ``args.steps`` as before.

A command that borrows a config's options (a benchmark script) keeps the field's default and help.
Where it deliberately runs with another default it says so with :class:`Default`, whose reason
``--help`` shows beside the config's own default; ``flags=`` gives an option the name that
command has always used for it (``--steps`` for ``render_steps``).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

_OPTION = "cli_option"
_NESTED = "cli_nested"


@dataclass(frozen=True)
class Option:
    """What the command line shows of one config field (see the module docstring)."""

    help: str
    flag: str | None = None
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None


def option(
    help: str,
    *,
    flag: str | None = None,
    choices: Iterable[Any] | None = None,
    metavar: str | None = None,
    parse: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Field metadata that makes the field a command-line option: ``field(default=..., metadata=option(...))``."""
    return {_OPTION: Option(help, flag, None if choices is None else tuple(choices), metavar, parse)}


@dataclass(frozen=True)
class Default:
    """A command's own default for a config option, and why it is not the config's (shown in ``--help``)."""

    value: Any
    why: str


def nested(*names: str) -> dict[str, Any]:
    """Field metadata for a field holding another config: its fields ``names`` become options too."""
    return {_NESTED: names}


@dataclass(frozen=True)
class ConfigOption:
    """One generated option: the config field it sets, its flag and its default."""

    name: str
    flag: str
    default: Any
    hint: Any
    option: Option


def config_options(config: type) -> list[ConfigOption]:
    """The options of ``config`` (nested configs' included), in field order."""
    found = list(_options(config, None))
    names = [o.name for o in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TypeError(f"{config.__name__}: options {twice} are declared twice (a nested config has them too)")
    return found


def _options(config: type, defaults: Any, names: Iterable[str] | None = None) -> Iterator[ConfigOption]:
    hints = typing.get_type_hints(config)
    wanted = None if names is None else set(names)
    for f in dataclasses.fields(config):
        if _NESTED in f.metadata:
            inner = hints[f.name]
            yield from _options(
                inner, _field_default(f) if defaults is None else getattr(defaults, f.name), f.metadata[_NESTED]
            )
            continue
        if _OPTION not in f.metadata or (wanted is not None and f.name not in wanted):
            continue
        opt: Option = f.metadata[_OPTION]
        default = _field_default(f) if defaults is None else getattr(defaults, f.name)
        flag = opt.flag or ("--no-" if default is True else "--") + f.name.replace("_", "-")
        yield ConfigOption(f.name, flag, default, hints[f.name], opt)
    if wanted is not None:
        missing = wanted - {f.name for f in dataclasses.fields(config) if _OPTION in f.metadata}
        if missing:
            raise TypeError(f"{config.__name__} has no options {sorted(missing)}")


def _field_default(f: dataclasses.Field) -> Any:
    """The field's default (``dataclasses.MISSING`` where it has none: then its option must be required)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def add_options(
    parser: argparse._ActionsContainer,
    config: type,
    *,
    only: Iterable[str] | None = None,
    required: Iterable[str] = (),
    defaults: Mapping[str, Default] | None = None,
    flags: Mapping[str, str] | None = None,
) -> None:
    """Add ``config``'s options to ``parser`` (or an argument group): all of them, or the fields ``only``
    names; the fields ``required`` names must then be given (no default). ``defaults`` gives this
    command's own :class:`Default` of some fields, ``flags`` its own flag of some fields."""
    wanted = None if only is None else set(only)
    must = set(required)
    own = dict(defaults or {})
    renamed = dict(flags or {})
    chosen = [o for o in config_options(config) if wanted is None or o.name in wanted]
    unknown = ((wanted or set()) | must | set(own) | set(renamed)) - {o.name for o in chosen}
    if unknown:
        raise TypeError(f"{config.__name__} has no options {sorted(unknown)} (or they are not among only=)")
    for o in chosen:
        if o.default is dataclasses.MISSING and o.name not in must:
            raise TypeError(f"{config.__name__}.{o.name} has no default: add_options(..., required=[{o.name!r}])")
        note = ""
        if o.name in own:
            new = own[o.name]
            if o.name in must or _without_none(o.hint) is bool or new.value == o.default:
                raise TypeError(
                    f"{config.__name__}.{o.name}: a Default must replace the default of an optional, "
                    f"non-bool option with another value (its default is {o.default!r})"
                )
            note = f" (default: {shown(new.value)} here, {config.__name__}'s {shown(o.default)}: {new.why})"
            o = dataclasses.replace(o, default=new.value)
        if o.name in renamed:
            o = dataclasses.replace(o, flag=renamed[o.name])
        _add(parser, o, o.name in must, note)


def _add(parser: argparse._ActionsContainer, o: ConfigOption, required: bool, note: str = "") -> None:
    text = o.option.help.replace("%", "%%")  # argparse formats help with %
    value_type = None if o.option.parse else _without_none(o.hint)  # parse= reads any annotation
    if value_type is bool:
        action = "store_false" if o.default else "store_true"
        parser.add_argument(o.flag, dest=o.name, action=action, default=o.default, help=text)
        return
    kwargs: dict[str, Any] = {"dest": o.name, "type": o.option.parse or _parser(value_type, o.flag, o.default)}
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = o.default
        if note:
            text += note.replace("%", "%%")
        elif o.default is not None:
            text += f" (default: {shown(o.default)})"
    if o.option.choices is not None:
        kwargs["choices"] = o.option.choices
    if o.option.metavar is not None:
        kwargs["metavar"] = o.option.metavar
    elif o.option.choices is None:
        kwargs["metavar"] = o.flag.lstrip("-").replace("-", "_").upper()  # --objects OBJECTS, not N_OBJECTS
    parser.add_argument(o.flag, help=text, **kwargs)


def shown(value: Any) -> str:
    """A value as the command line writes it: ``0,1`` for a list."""
    if isinstance(value, list | tuple):
        return ",".join(shown(v) for v in value)
    return str(value)


def _without_none(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
        raise TypeError(f"{hint}: an option takes one type (or None)")
    return hint


def _parser(value_type: Any, flag: str, default: Any) -> Callable[[str], Any]:
    """The argparse ``type`` of a field's annotation."""
    if value_type in (int, float, str):
        return value_type
    origin, args = typing.get_origin(value_type), typing.get_args(value_type)
    if origin is list and len(args) == 1:
        return comma_separated(args[0], list, flag=flag, example=default)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return comma_separated(args[0], tuple, flag=flag, example=default)
    if origin is tuple and args and len(set(args)) == 1:
        return comma_separated(args[0], tuple, count=len(args), flag=flag, example=default)
    raise TypeError(f"{flag}: no command-line form for {value_type}; give option(parse=...)")


def comma_separated(
    item: Callable[[str], Any],
    into: Callable[[list[Any]], Any] = list,
    *,
    count: int | None = None,
    flag: str = "this option",
    example: Any = None,
) -> Callable[[str], Any]:
    """A parser of ``A,B,...`` into a list or tuple of ``item`` values (exactly ``count`` of them if given)."""
    name = getattr(item, "__name__", "value")

    def parse(text: str) -> Any:
        try:
            values = [item(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = None
        if values is None or not values or (count is not None and len(values) != count):
            amount = f"{count} " if count is not None else ""
            hint = f", e.g. {shown(example)}" if example else ""
            raise argparse.ArgumentTypeError(f"{flag} takes {amount}comma-separated {name} values{hint}; got {text!r}")
        return into(values)

    return parse


def config_from_args(config: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """``config`` built from the options :func:`add_options` added (the rest keep their defaults);
    ``overrides`` replace any field. Every parsed value named like an option field is read, so a
    command's own option must not share a field's name (give it another ``dest``)."""
    values = vars(args)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(config):  # pyright: ignore[reportArgumentType]  config is a dataclass
        if _NESTED in f.metadata:
            changes = {n: values[n] for n in f.metadata[_NESTED] if n in values}
            kwargs[f.name] = dataclasses.replace(_field_default(f), **changes)
        elif _OPTION in f.metadata and f.name in values:
            kwargs[f.name] = values[f.name]
    kwargs.update(overrides)
    return config(**kwargs)
