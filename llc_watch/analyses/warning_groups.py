"""Per-checkpoint warnings, one line per kind: the same warning at 20 checkpoints is one finding.

An analysis that warns at each checkpoint (the LLC: unmixed chains, a negative estimate, gradient
noise) would otherwise print, and the report would list, the same sentence once per checkpoint with
other numbers in it: on the addition demo 94 lines that hid the few that differ. Lines that
are the same once their numbers are masked are one kind; each varying number becomes its range.

    >>> lines = [(0, "split-R̂ = 1.707 > 1.01: not mixed"), (1, "split-R̂ = 1.619 > 1.01: not mixed"),
    ...          (289, "chain 3 failed"), (921, "split-R̂ = 1.769 > 1.01: not mixed")]
    >>> for line in group_step_warnings(lines, "LLC", n_checkpoints=23):
    ...     print(line)
    LLC at 3 of 23 checkpoints (steps 0, 1, 921): split-R̂ = 1.619 to 1.769 > 1.01: not mixed
    LLC at step 289: chain 3 failed
"""
from __future__ import annotations

import re
from typing import Iterable

# a number standing alone (not the 2 of "h2" or "nβ²"): sign, digits, decimals, exponent
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.]*\w)")
STEPS_SHOWN = 10   # steps listed per kind before "..."


def _kind(line: str) -> str:
    return _NUMBER.sub("#", line)


def _value_text(tokens: list[str]) -> str:
    """One number's text across a kind: itself when it never changes, else 'min to max'."""
    if len(set(tokens)) == 1:
        return tokens[0]
    values = [float(t) for t in tokens]
    lo, hi = min(values), max(values)
    return f"{lo:.4g} to {hi:.4g}"


def _steps_text(steps: list[float]) -> str:
    shown = ", ".join(f"{s:g}" for s in steps[:STEPS_SHOWN])
    return shown + (", ..." if len(steps) > STEPS_SHOWN else "")


def group_step_warnings(lines: Iterable[tuple[float, str]], what: str, n_checkpoints: int | None = None) -> list[str]:
    """[(step, warning)] → one line per kind of warning, in the order kinds first appear.

    A kind seen at one checkpoint keeps its line ("LLC at step 289: ..."); one seen at several
    becomes "LLC at k of n checkpoints (steps ...): <the warning, each varying number as its
    range>". `what` names the source; `n_checkpoints` the checkpoints it looked at (for "k of n").
    """
    kinds: dict[str, list[tuple[float, str]]] = {}
    for step, line in lines:
        kinds.setdefault(_kind(line), []).append((float(step), line))
    out = []
    for kind, seen in kinds.items():
        steps = sorted({s for s, _ in seen})
        if len(steps) == 1 and len(seen) == 1:
            out.append(f"{what} at step {steps[0]:g}: {seen[0][1]}")
            continue
        columns = list(zip(*[_NUMBER.findall(line) for _, line in seen]))
        parts = kind.split("#")
        text = parts[0] + "".join(_value_text(list(col)) + rest for col, rest in zip(columns, parts[1:]))
        of = f" of {n_checkpoints}" if n_checkpoints else ""
        out.append(f"{what} at {len(steps)}{of} checkpoints (steps {_steps_text(steps)}): {text}")
    return out
