"""Frozen settings dataclasses: one default per setting, in one place, with its comment as its help.

An analysis's Settings is a frozen dataclass whose fields carry commented defaults, e.g.

    @dataclass(frozen=True)
    class ProbeSettings(SettingsBase):
        n_train: int = 2048               # probe-set examples that fit probes (Naidu et al. used 10,000)
        C: float = 100.0                  # inverse L2 strength, sklearn's convention
        ...
        def validate(self):
            self.at_least("n_train", 1)
            self.positive("C")

The comment is the help (the CLI reads it from the source):

    >>> from llc_watch.probes import ProbeSettings
    >>> field_help(ProbeSettings)["C"]
    "inverse L2 strength, sklearn's convention"
    >>> ProbeSettings(C=-1.0)                                              # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    SettingsError: C=-1.0: must be > 0
    >>> ProbeSettings.from_mapping({"n_trian": 3})                          # doctest: +ELLIPSIS
    Traceback (most recent call last):
    llc_watch.settings.SettingsError: unknown setting(s) ['n_trian']; known: n_train, ...

Validation runs when the object is made, so every caller (CLI, TOML, Python) is checked before any
checkpoint is loaded. Float fields must be finite unless the default is itself not finite.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import math
import tokenize
import typing
from functools import lru_cache


class SettingsError(ValueError):
    """A setting out of range, not finite, or unknown; one line naming it and what is allowed."""


@lru_cache(maxsize=None)
def field_help(cls) -> dict[str, str]:
    """{field: the comment after its default} read from the class's source (the one place it is written),
    and from its bases' for the fields it inherits (a subclass's own comment wins where it
    redefines a field). Continuation comment lines (a comment alone on the next line) are appended.

        >>> from llc_watch.analyses.calibration import CalibrationSettings
        >>> field_help(CalibrationSettings)["chains"]          # inherited from LLCSettings
        'SGLD chains (sampled at once)'
    """
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update({k: v for k, v in _own_field_help(klass).items() if k in names})
    return out


def _own_field_help(cls) -> dict[str, str]:
    """The comments in `cls`'s own source, for the fields it writes there."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    last = None
    lines = src.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type != tokenize.COMMENT:
            continue
        row = tok.start[0] - 1
        code = lines[row][:tok.start[1]].strip()
        text = tok.string.lstrip("#").strip()
        if code:
            name = code.split(":", 1)[0].strip()
            last = name if name in names else None
            if last:
                out[last] = text
        elif last:
            out[last] += " " + text
    return out


def _is_float(tp) -> bool:
    return tp is float or (typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None))
                           and float in typing.get_args(tp))


@dataclasses.dataclass(frozen=True)
class SettingsBase:
    """Base of every analysis's Settings: validation on construction, mapping in and out."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):  # lists from TOML / JSON become tuples: frozen and hashable
                object.__setattr__(self, f.name, tuple(v))
            if _is_float(hints.get(f.name)) and isinstance(v, (int, float)) and not isinstance(v, bool):
                if not math.isfinite(v) and (not isinstance(f.default, float) or math.isfinite(f.default)):
                    raise SettingsError(f"{f.name}={v}: must be a finite number")
        self.validate()

    def validate(self) -> None:
        """Ranges and names; subclasses raise SettingsError through the helpers below."""

    # helpers ---------------------------------------------------------------------------------
    def _fail(self, name, why):
        raise SettingsError(f"{name}={getattr(self, name)!r}: {why}")

    def at_least(self, name: str, lo, allow_none: bool = False):
        v = getattr(self, name)
        if v is None and allow_none:
            return
        if v is None or v < lo:
            self._fail(name, f"must be >= {lo}")

    def positive(self, name: str, allow_none: bool = False):
        v = getattr(self, name)
        if v is None and allow_none:
            return
        if v is None or not v > 0:
            self._fail(name, "must be > 0")

    def within(self, name: str, lo, hi):
        v = getattr(self, name)
        if v is None or not lo <= v <= hi:
            self._fail(name, f"must be between {lo} and {hi}")

    def one_of(self, name: str, allowed):
        if getattr(self, name) not in allowed:
            self._fail(name, f"must be one of {', '.join(map(str, allowed))}")

    def device_name(self, name: str = "device"):
        from llc_watch.device import DeviceError, check_device_name
        try:
            check_device_name(getattr(self, name))
        except DeviceError:
            self._fail(name, "give auto, cpu, cuda or cuda:N")

    # mapping in and out ----------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, given=None, base=None):
        """Defaults < base < given (None values in `given` mean "not given"); unknown keys are an error."""
        if isinstance(given, cls):
            return given
        given = {k: v for k, v in dict(given or {}).items() if v is not None}
        merged = {**dict(base or {}), **given}
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise SettingsError(f"unknown setting(s) {unknown}; known: {', '.join(known)}")
        return cls(**{k: v for k, v in merged.items() if k in known})

    def to_dict(self) -> dict:
        """Plain values (tuples as lists): what jobs receive and what result files store."""
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}
