"""argparse options generated from a frozen Settings dataclass: each default lives in the dataclass.

    >>> import argparse
    >>> from llc_watch.analyses.llc import LLCSettings
    >>> p = argparse.ArgumentParser()
    >>> add_settings_options(p, LLCSettings)
    >>> given = given_settings(p.parse_args(["--chains", "8", "--params", "head:0.1,embed.*"]), LLCSettings)
    >>> given
    {'chains': 8, 'params': ['head:0.1', 'embed.*']}

An option left out is not given (None), so lower layers (a run's calibration.json) still apply.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from llc_watch.settings import field_help

from .errors import UserError

_PREFIX = "setting_"


def _unwrap(tp):
    """(base type, element type for tuples or None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(types, "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else (str, None)
    if tp is tuple or origin is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return tuple, (args[0] if args else float)
    return tp, None


def _list_of(elem, name):
    def convert(text: str):
        out = []
        for item in (x.strip() for x in text.split(",")):
            if not item:
                continue
            if item.lower() == "none":
                out.append(None)
                continue
            try:
                out.append(elem(item))
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"--{name.replace('_', '-')}: {item!r} is not a {elem.__name__}; give a comma-separated list") from None
        return out
    return convert


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_settings_options(parser, Settings, hidden=(), title: str | None = None) -> None:
    """One option per field of `Settings` (bools as --x/--no-x, tuples as comma lists), help from the
    field's comment, default shown from the dataclass (and left None in the namespace)."""
    hints = typing.get_type_hints(Settings)
    helps = field_help(Settings)
    group = parser.add_argument_group(title) if title else parser
    for f in dataclasses.fields(Settings):
        if f.name in hidden:
            continue
        tp, elem = _unwrap(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_ = f"{helps.get(f.name, '')} (default {shown})".strip()
        kw = dict(dest=_PREFIX + f.name, default=None, help=help_.replace("%", "%%"))
        if tp is bool:
            group.add_argument(option_name(f.name), action=argparse.BooleanOptionalAction, **kw)
        elif tp is tuple:
            group.add_argument(option_name(f.name), type=_list_of(elem, f.name), metavar="A,B,...", **kw)
        elif tp in (int, float, str):
            group.add_argument(option_name(f.name), type=tp, metavar=f.name.upper(), **kw)
        else:
            raise TypeError(f"{Settings.__name__}.{f.name}: no CLI form for type {tp}")


def given_settings(args, Settings) -> dict:
    """{field: value} for the options the user gave."""
    out = {}
    for f in dataclasses.fields(Settings):
        v = getattr(args, _PREFIX + f.name, None)
        if v is not None:
            out[f.name] = v
    return out


def parse_steps(text: str | None) -> list[int] | None:
    """'0,100,200' -> [0, 100, 200]; None keeps every checkpoint."""
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{text!r}: give --checkpoints as comma-separated steps, e.g. 0,100,2500") from None
