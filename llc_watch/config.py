"""Run configuration: dataclasses with commented defaults, TOML files, CLI overrides, presets.

    >>> cfg = RunConfig.from_preset("addition-tiny")
    >>> cfg = cfg.with_overrides(["train.steps=200", "model.d_model=32"])
    >>> cfg.train.steps, cfg.model.d_model
    (200, 32)
"""
from __future__ import annotations

import dataclasses
import math
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import ModelConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A bad configuration value, file or override; the message names it and what to do."""


@dataclass
class TaskConfig:
    name: str = "addition"                                  # a name from `llc-watch tasks`
    settings: dict[str, Any] = field(default_factory=dict)  # the task's own settings, e.g. n_bits


@dataclass
class TrainConfig:
    steps: int = 3000             # optimiser steps
    batch_size: int = 128         # examples per step (full-batch when >= the train set)
    lr: float = 1e-3              # peak learning rate
    weight_decay: float = 0.1     # AdamW decoupled weight decay
    beta1: float = 0.9            # AdamW betas (0.9, 0.95) as in the quiet-features paper
    beta2: float = 0.95
    warmup_frac: float = 0.1      # fraction of steps of linear warm-up
    schedule: str = "cosine"      # cosine | constant (after warm-up)
    min_lr_frac: float = 0.1      # cosine decays to this fraction of lr
    grad_clip: float = 1.0        # max gradient norm; 0 disables clipping
    n_train: int = 0              # 0: fresh samples every step; >0: a fixed train set of this size
    train_fraction: float = 0.3   # tasks with an enumerable universe (modular addition): train share
    eval_size: int = 1024         # examples in the fixed train/test evaluation sets
    device: str = "auto"          # auto | cpu | cuda
    threads: int = 0              # torch CPU threads; 0 = torch's default


@dataclass
class CheckpointConfig:
    n_log: int = 30               # log-spaced checkpoint steps (1 .. steps)
    n_linear: int = 20            # linearly spaced checkpoint steps; step 0 and the last are always kept


@dataclass
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 0                 # one seed for init, data and evaluation sets

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; "
                              f"sections are task, model, train, checkpoints, seed")
        parts = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            sub = _SECTIONS.get(f.name)
            if sub is None:
                parts[f.name] = d[f.name]
                continue
            if not isinstance(d[f.name], dict):
                raise ConfigError(f"config section [{f.name}] must be a table of settings")
            parts[f.name] = _build(sub, d[f.name], f.name)
        cfg = cls(**parts)
        cfg.validate()
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        preset = data.pop("preset", None)
        base = cls.from_preset(preset).to_dict() if preset else cls().to_dict()
        return cls.from_dict(_deep_merge(base, data))

    @classmethod
    def from_preset(cls, name: str) -> "RunConfig":
        from .presets import all_presets
        presets = all_presets()
        if name not in presets:
            raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(sorted(presets))}")
        return cls.from_dict(presets[name]["config"])

    def with_overrides(self, overrides: list[str]) -> "RunConfig":
        """Apply `section.key=value` strings (values parsed as TOML literals, else strings)."""
        d = self.to_dict()
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=3e-4")
            key, raw = item.split("=", 1)
            path = key.strip().split(".")
            value = _parse_value(raw.strip())
            node = d
            for p in path[:-1]:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"override {item!r}: no config section {'.'.join(path[:-1])!r}")
                node = node[p]
            is_open_table = path[:2] == ["task", "settings"]
            if path[-1] not in node and not is_open_table:
                raise ConfigError(f"override {item!r}: unknown setting {key!r}; "
                                  f"known here: {', '.join(sorted(node))}")
            node[path[-1]] = value
        return RunConfig.from_dict(d)

    # --- use --------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def make_task(self):
        from .tasks import TaskConfigError, get_task
        try:
            return get_task(self.task.name, **self.task.settings)
        except TaskConfigError as e:
            raise ConfigError(str(e)) from None
        except TypeError as e:
            raise ConfigError(f"task {self.task.name!r}: {e}") from None

    def model_config(self, task=None) -> ModelConfig:
        """The model config with vocabulary and context filled in from the task."""
        task = task or self.make_task()
        m = dataclasses.replace(self.model)
        if task.output == "continuous":
            sample = task.sample(1, seed=0)
            m.d_in, m.d_out = sample.tokens.shape[-1], sample.targets.shape[-1]
        else:
            m.vocab_size = task.vocab_size
        m.n_ctx = max(m.n_ctx, task.seq_len)
        return m

    def validate(self) -> None:
        t = self.train
        checks = [
            (t.steps >= 1, "train.steps", "must be >= 1"),
            (t.batch_size >= 1, "train.batch_size", "must be >= 1"),
            (t.lr > 0, "train.lr", "must be > 0"),
            (t.weight_decay >= 0, "train.weight_decay", "must be >= 0"),
            (0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "train.beta1/beta2", "must lie in [0, 1)"),
            (0 <= t.warmup_frac < 1, "train.warmup_frac", "must lie in [0, 1)"),
            (t.schedule in ("cosine", "constant"), "train.schedule", "choose cosine or constant"),
            (0 <= t.min_lr_frac <= 1, "train.min_lr_frac", "must lie in [0, 1]"),
            (t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables clipping)"),
            (t.n_train >= 0, "train.n_train", "must be >= 0 (0 = fresh samples every step)"),
            (0 < t.train_fraction <= 1, "train.train_fraction", "must lie in (0, 1]"),
            (t.eval_size >= 1, "train.eval_size", "must be >= 1"),
            (t.device in ("auto", "cpu", "cuda"), "train.device", "choose auto, cpu or cuda"),
            (self.checkpoints.n_log >= 0 and self.checkpoints.n_linear >= 0,
             "checkpoints.n_log/n_linear", "must be >= 0"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise ConfigError(f"{name}: {why}")
        task = self.make_task()  # validates the task settings
        try:
            self.model_config(task).validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None


_SECTIONS = {"task": TaskConfig, "model": ModelConfig, "train": TrainConfig, "checkpoints": CheckpointConfig}


def _build(cls, values: dict, section: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"[{section}] has unknown setting(s) {sorted(unknown)}; known: {', '.join(sorted(fields))}")
    out = {}
    for k, v in values.items():
        default = getattr(cls(), k)
        if isinstance(default, bool) != isinstance(v, bool) or (
                isinstance(default, (int, float)) and not isinstance(v, (int, float))) or (
                isinstance(default, str) and not isinstance(v, str)):
            raise ConfigError(f"{section}.{k}={v!r}: expected a {type(default).__name__}")
        if isinstance(default, int) and not isinstance(default, bool) and isinstance(v, float):
            if not v.is_integer():
                raise ConfigError(f"{section}.{k}={v!r}: expected an integer")
            v = int(v)
        if isinstance(default, float) and isinstance(v, int):
            v = float(v)
        if isinstance(v, float) and not math.isfinite(v):   # inf/nan pass every range check; refuse them here
            raise ConfigError(f"{section}.{k}={v!r}: must be a finite number")
        out[k] = v
    return cls(**out)


def _parse_value(raw: str):
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _deep_merge(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
