"""Bring your own model: a problem is what the LLC needs besides the weights, given as `module:function`.

The function takes no arguments and returns the model (its architecture; the weights come from each
checkpoint), the loss `(model, batch) -> scalar mean loss` and the data (anything estimate_llc takes:
a tensor, a tuple of tensors, a Dataset, a DataLoader), as a `Problem`, a dict with those keys, or a
tuple (model, loss, data):

    # mypkg/problem.py
    def make():
        model = MLP(784, 64, 10)
        loss = lambda m, batch: F.cross_entropy(m(batch[0]), batch[1])
        return {"model": model, "loss": loss, "data": (x_train, y_train)}

    >>> p = load_problem("llc_watch.problem:_demo_problem")
    >>> type(p.model).__name__, len(p.data[0])
    ('Linear', 16)
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


class ProblemError(ValueError):
    """A problem that cannot be imported or does not return (model, loss, data); one line says what to fix."""


@dataclass
class Problem:
    model: torch.nn.Module          # the architecture; each checkpoint's weights are loaded into a copy
    loss: Callable                  # (model, batch) -> scalar mean loss
    data: Any                       # what the LLC is measured on (n = len(data))
    features: dict = field(default_factory=dict)   # optional {name: labels} (not used by the LLC)


_CACHE: dict[str, Problem] = {}


def load_problem(spec: str) -> Problem:
    """Import `module:function`, call it once per process, and check what it returns."""
    if spec in _CACHE:
        return _CACHE[spec]
    mod_name, _, fn_name = str(spec).partition(":")
    if not mod_name or not fn_name:
        raise ProblemError(f"problem {spec!r}: give it as module:function, e.g. mypkg.problem:make")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except ModuleNotFoundError as e:
        raise ProblemError(f"problem {spec!r}: cannot import {e.name!r}; is it on PYTHONPATH?") from None
    except AttributeError:
        raise ProblemError(f"problem {spec!r}: module {mod_name!r} has no function {fn_name!r}") from None
    out = fn()
    if isinstance(out, Problem):
        p = out
    elif isinstance(out, dict):
        missing = [k for k in ("model", "loss", "data") if k not in out]
        if missing:
            raise ProblemError(f"problem {spec!r} returned a dict without {missing}")
        p = Problem(out["model"], out["loss"], out["data"], dict(out.get("features") or {}))
    elif isinstance(out, (tuple, list)) and len(out) in (3, 4):
        p = Problem(*out)
    else:
        raise ProblemError(f"problem {spec!r} must return a Problem, a dict or a tuple (model, loss, data); "
                           f"got {type(out).__name__}")
    if not isinstance(p.model, torch.nn.Module) or not callable(p.loss):
        raise ProblemError(f"problem {spec!r}: model must be a torch.nn.Module and loss a callable (model, batch)")
    _CACHE[spec] = p
    return p


def _demo_problem():
    torch.manual_seed(0)
    x = torch.randn(16, 3)
    return {"model": torch.nn.Linear(3, 1), "loss": lambda m, b: ((m(b[0]).squeeze(-1) - b[1]) ** 2).mean(),
            "data": (x, x.sum(1))}
