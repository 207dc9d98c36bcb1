"""The run folder and its checkpoint history.

    runs/NAME/
      config.json                      the full RunConfig (task, model, training, seed)
      checkpoints/step_000120.safetensors   weights; metadata holds the config JSON and the step
      metrics.csv                      tidy: step, measure, value (train/test loss and accuracy)
      state/resume.pt                  optimiser state for resuming (tensors only, weights_only load)
      llc.csv, probes.csv, ...         per-checkpoint analyses, each with its results/ folder

Checkpoints load without executing code: safetensors for weights, JSON for the config.

    >>> run = open_run("runs/addition")                     # doctest: +SKIP
    >>> ckpt = run.checkpoints()[-1]                         # doctest: +SKIP
    >>> model = ckpt.load_model()                            # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .config import ConfigError, RunConfig
from .io import atomic_write_bytes
from .model import Transformer

FORMAT = "llc_watch/1"


class CheckpointError(RuntimeError):
    """A checkpoint or run folder that cannot be read; the message names the file and what to do."""


def checkpoint_steps(steps: int, n_log: int, n_linear: int) -> list[int]:
    """Union of log-spaced and linearly spaced steps in [0, steps], with 0 and `steps` always in.

    >>> checkpoint_steps(1000, n_log=5, n_linear=3)
    [0, 1, 6, 32, 178, 500, 1000]
    """
    log = np.geomspace(1, steps, n_log) if n_log and steps >= 1 else []
    lin = np.linspace(0, steps, n_linear) if n_linear else []
    return sorted({0, steps, *(int(round(s)) for s in log), *(int(round(s)) for s in lin)})


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}.safetensors"


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, config: RunConfig) -> Path:
    path = Path(run_dir) / "checkpoints" / checkpoint_name(step)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "step": str(step), "config": config.to_json()}
    atomic_write_bytes(path, canonical_safetensors(save(state, metadata=meta)))
    return path


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted, so identical weights and metadata
    give identical bytes (the writer emits metadata in hash order, which differs from run to run and
    would make a rewritten checkpoint hash as new work). Tensor offsets are relative to the data
    section, so only the header changes; it is padded with spaces to 8 bytes as the format asks.

    >>> import torch
    >>> a = save({"w": torch.ones(2)}, metadata={"b": "1", "a": "2"})
    >>> canonical_safetensors(a) == canonical_safetensors(save({"w": torch.ones(2)}, metadata={"a": "2", "b": "1"}))
    True
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


# what makes a checkpoint belong to a run: a checkpoint from another architecture, task or seed
# gives other numbers for the same step, so it is refused rather than analysed as if it were this run's
IDENTITY = ("task", "model", "seed")


def config_mismatch(checkpoint_config: dict, run_config: dict, keys=IDENTITY) -> list[str]:
    """'section.key: X in the checkpoint, Y in config.json' for each identity setting that differs.

    >>> for line in config_mismatch({"seed": 7, "model": {"d_model": 64}}, {"seed": 0, "model": {"d_model": 32}}):
    ...     print(line)
    model.d_model is 64 in the checkpoint, 32 in the run's config.json
    seed is 7 in the checkpoint, 0 in the run's config.json
    """
    out = []

    def walk(a, b, prefix):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix[:-1]} is {json.dumps(a)} in the checkpoint, {json.dumps(b)} in the run's config.json")
    for k in keys:
        walk(checkpoint_config.get(k), run_config.get(k), f"{k}.")
    return out


@dataclass(frozen=True)
class Checkpoint:
    """A picklable handle on one checkpoint file: what a per-checkpoint job receives."""

    path: str
    step: int
    run_config: str | None = field(default=None, repr=False, compare=False)  # the run's config.json (JSON); when set, config() refuses a foreign checkpoint

    def _fail(self, why: str, advice: str | None = None) -> CheckpointError:
        advice = advice or ("Leave it out with --checkpoints, or delete it (analyses then skip this step; "
                            "training does not rewrite a checkpoint of a finished run)")
        return CheckpointError(f"checkpoint {self.path} {why}. {advice}.")

    def metadata(self) -> dict:
        try:
            with open(self.path, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                if not 0 < header_len < 100_000_000:
                    raise ValueError("bad header length")
                header = json.loads(f.read(header_len))
        except FileNotFoundError:
            raise self._fail("does not exist") from None
        except (ValueError, UnicodeDecodeError):
            raise self._fail("is not a safetensors file (its header cannot be read: truncated, corrupt, "
                             "or another format such as a pickle)") from None
        meta = header.get("__metadata__") or {}
        if meta.get("format") != FORMAT:
            raise self._fail(f"was not written by llc_watch (format {meta.get('format')!r})")
        return meta

    def config(self) -> RunConfig:
        """The config embedded in the checkpoint; with `run_config` set, a checkpoint whose task,
        architecture or seed differ from the run's is refused, naming both values."""
        cfg = self._embedded_config()
        diff = self._mismatch(cfg)
        if diff:
            raise self.foreign_error(diff)
        return cfg

    def _embedded_config(self) -> RunConfig:
        try:
            return RunConfig.from_dict(json.loads(self.metadata()["config"]))
        except (KeyError, json.JSONDecodeError, ConfigError) as e:
            raise self._fail(f"has an unreadable config ({e})") from None

    def _mismatch(self, cfg: RunConfig) -> list[str]:
        return [] if self.run_config is None else config_mismatch(cfg.to_dict(), json.loads(self.run_config))

    def foreign_error(self, diff: list[str]) -> CheckpointError:
        return self._fail(f"comes from another run ({'; '.join(diff[:4])})",
                          "Move it out of this run's checkpoints/ folder, or leave it out with --checkpoints")

    def foreign(self) -> CheckpointError | None:
        """The error naming how this checkpoint's task, architecture or seed differ from its run's,
        or None when they agree (or the checkpoint cannot be read: its job says why)."""
        try:
            diff = self._mismatch(self._embedded_config())
        except CheckpointError:
            return None
        return self.foreign_error(diff) if diff else None

    def load_state(self) -> dict[str, torch.Tensor]:
        self.metadata()  # checks the format before reading tensors
        try:
            return load_file(self.path)
        except (SafetensorError, OSError, ValueError) as e:
            raise self._fail(f"is truncated or corrupt ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None

    def load_model(self, device: str | torch.device = "cpu") -> Transformer:
        cfg = self.config()
        model = Transformer(cfg.model_config())
        state, own = self.load_state(), model.state_dict()
        bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if bad or missing or extra:
            what = (f"tensor {bad[0]} has shape {tuple(state[bad[0]].shape)}, its model config makes "
                    f"{tuple(own[bad[0]].shape)}" if bad else
                    f"tensor(s) {missing[:3]} missing" if missing else f"unexpected tensor(s) {extra[:3]}")
            raise self._fail(f"does not fit the model its own config describes ({what})")
        model.load_state_dict(state)
        return model.to(device).eval()

    def fingerprint(self) -> str:
        """sha256 of the file's bytes: a job keyed on it never mixes up two different weights."""
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()


class Run:
    """A run folder: its config, task, checkpoints and training metrics."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        cfg_path = self.dir / "config.json"
        if not cfg_path.is_file():
            raise CheckpointError(
                f"{self.dir} is not an llc_watch run folder (no config.json). "
                "Create one with `llc-watch train --preset NAME --out DIR`.")
        try:
            self.config = RunConfig.from_dict(json.loads(cfg_path.read_text()))
        except (json.JSONDecodeError, ConfigError) as e:
            raise CheckpointError(f"{cfg_path} cannot be read: {e}") from None

    @cached_property
    def task(self):
        return self.config.make_task()

    def checkpoints(self, steps: list[int] | None = None) -> list[Checkpoint]:
        """Handles on the run's checkpoints; each carries the run's config, so a foreign one is refused."""
        found = {}
        own = self.config.to_json()
        for p in sorted((self.dir / "checkpoints").glob("step_*.safetensors")):
            try:
                found[int(p.stem.split("_")[1])] = Checkpoint(str(p), int(p.stem.split("_")[1]), own)
            except ValueError:
                continue
        if steps is None:
            return [found[s] for s in sorted(found)]
        missing = [s for s in steps if s not in found]
        if missing:
            raise CheckpointError(
                f"{self.dir} has no checkpoint at step(s) {missing}; available: {sorted(found)}")
        return [found[s] for s in steps]

    def metrics(self) -> pd.DataFrame:
        path = self.dir / "metrics.csv"
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: run `llc-watch train` on this run folder first")
        return pd.read_csv(path)


def open_run(run_dir: str | Path) -> Run:
    return Run(run_dir)
