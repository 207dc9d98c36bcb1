"""Training with a checkpoint history: AdamW, warm-up then cosine or constant, clipping, resumable.

    >>> from llc_watch.config import RunConfig
    >>> cfg = RunConfig.from_preset("addition-tiny")
    >>> run = train(cfg, "runs/tiny")        # doctest: +SKIP
    >>> len(run.checkpoints()) >= 40         # doctest: +SKIP
    True

Resuming: the data at step s is a pure function of (seed, s), and the optimiser state is saved with
every checkpoint, so a killed run restarted with the same command ends at the same weights.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .checkpoints import CheckpointError, Run, checkpoint_steps, save_checkpoint
from .config import ConfigError, RunConfig
from .io import atomic_write_bytes, atomic_write_csv, atomic_write_text, remove_stale_temp_files
from .model import Transformer
from .tasks import Batch, Task, derive_seed


class RunExistsError(ConfigError):
    """The run folder holds a run with a different config."""


class TrainingDiverged(ConfigError):
    """The loss became NaN or infinite; checkpoints before it are kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def lr_at(step: int, cfg: RunConfig) -> float:
    t = cfg.train
    warmup = int(t.warmup_frac * t.steps)
    if step < warmup:
        return t.lr * (step + 1) / warmup
    if t.schedule == "constant":
        return t.lr
    progress = (step - warmup) / max(1, t.steps - warmup)
    return t.lr * (t.min_lr_frac + (1 - t.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


class TrainingData:
    """Train batches and fixed evaluation sets for a run, all derived from the run's seed."""

    def __init__(self, task: Task, cfg: RunConfig):
        self.task, self.cfg, t = task, cfg, cfg.train
        seed = cfg.seed
        if task.enumerate() is not None:
            self.train_set = task.split("train", 0, seed, t.train_fraction)
            self.test_set = task.split("test", t.eval_size, seed, t.train_fraction) if t.train_fraction < 1 else None
        else:
            self.train_set = task.sample(t.n_train, derive_seed(seed, "train-set")) if t.n_train else None
            self.test_set = task.sample(t.eval_size, derive_seed(seed, "test-set"))
        self.train_eval = (self.train_set[: t.eval_size] if self.train_set is not None
                           else task.sample(t.eval_size, derive_seed(seed, "train-eval")))

    def batch(self, step: int) -> Batch:
        t, seed = self.cfg.train, derive_seed(self.cfg.seed, "batch", step)
        if self.train_set is None:
            return self.task.sample(t.batch_size, seed)
        n = len(self.train_set)
        if t.batch_size >= n:
            return self.train_set
        g = torch.Generator().manual_seed(seed)
        return self.train_set[torch.randperm(n, generator=g)[: t.batch_size]]


@torch.no_grad()
def evaluate(model: Transformer, task: Task, batch: Batch, device, chunk: int = 2048) -> tuple[float, float]:
    """(mean answer-token loss, exact-match accuracy) over `batch`."""
    model.eval()
    losses, correct, weights = [], [], []
    for i in range(0, len(batch), chunk):
        b = batch[i:i + chunk].to(device)
        out = model(b.tokens)
        losses.append(task.loss(out, b).item() * b.loss_mask.sum().item())
        weights.append(b.loss_mask.sum().item())
        try:
            correct.append(task.per_example_correct(out, b).float().sum().item())
        except NotImplementedError:  # a continuous task without its own notion of "correct"
            correct.append(float("nan"))
    model.train()
    return sum(losses) / max(1, sum(weights)), sum(correct) / len(batch)


def _resume_path(run_dir: Path) -> Path:
    return run_dir / "state" / "resume.pt"


def prepare_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    """Create the run folder, or check that an existing one holds this very config."""
    cfg_path = run_dir / "config.json"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a run folder: give --out a folder path")
    if cfg_path.is_file():
        old = json.loads(cfg_path.read_text())
        if old != json.loads(cfg.to_json()):
            diff = _diff(old, json.loads(cfg.to_json()))
            raise RunExistsError(
                f"{run_dir} already holds a run with a different config ({diff}). Nothing was "
                "changed; pick a new --out folder, or rerun with the original settings to resume.")
        remove_stale_temp_files(run_dir)  # a killed run's half-written files; the run is ours
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg_path, cfg.to_json())


def _diff(old: dict, new: dict, prefix="") -> str:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            d = _diff(a, b, f"{prefix}{k}.")
            if d:
                out.append(d)
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return "; ".join(out)


def train(cfg: RunConfig, run_dir: str | Path, progress: bool = True, stop_after: int | None = None) -> Run:
    """Train `cfg` into `run_dir`, resuming from its last checkpoint if it has one.

    stop_after: stop (as if killed) once this many steps are done; for tests of resuming.
    """
    cfg.validate()
    run_dir = Path(run_dir)
    t = cfg.train
    device = resolve_device(t.device)   # before the folder is made: a refused config writes nothing
    prepare_run_dir(cfg, run_dir)
    if t.threads:
        torch.set_num_threads(t.threads)
    task = cfg.make_task()
    data = TrainingData(task, cfg)
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = Transformer(cfg.model_config(task)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)
    ckpt_steps = checkpoint_steps(t.steps, cfg.checkpoints.n_log, cfg.checkpoints.n_linear)

    start, rows = 0, []
    resume = _resume_path(run_dir)
    if resume.is_file():
        try:
            state = torch.load(resume, map_location=device, weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optim"])
            start = int(state["step"])
        except Exception as e:  # a torn or foreign file: say which, never execute it
            raise CheckpointError(f"{resume} cannot be loaded ({type(e).__name__}: {e}); delete it to "
                                  "restart training from step 0") from None
        if (run_dir / "metrics.csv").is_file():
            rows = pd.read_csv(run_dir / "metrics.csv").query("step <= @start").to_dict("records")
    if start >= t.steps and (run_dir / "checkpoints").is_dir():
        if progress:
            print(f"{run_dir}: training already complete ({t.steps} steps)")
        return Run(run_dir)

    def checkpoint(step: int):
        for split, batch in (("train", data.train_eval), ("test", data.test_set)):
            if batch is None:
                continue
            loss, acc = evaluate(model, task, batch, device)
            if not math.isfinite(loss):   # checked where the loss is already on the CPU: no per-step sync
                kept = max((r["step"] for r in rows if r["step"] < step), default=None)
                raise TrainingDiverged(
                    f"training diverged: the {split} loss is {loss} (not finite) at step {step}; "
                    + (f"checkpoints up to step {kept} are kept. " if kept is not None else "")
                    + f"Lower train.lr (now {t.lr:g}) or set train.grad_clip, and train into a new --out folder")
            rows.extend([{"step": step, "measure": f"{split}_loss", "value": loss},
                         {"step": step, "measure": f"{split}_acc", "value": acc}])
        save_checkpoint(run_dir, step, model, cfg)
        atomic_write_csv(run_dir / "metrics.csv", pd.DataFrame(rows))
        # the resume state goes last: a kill before this line just redoes this checkpoint
        import io
        buf = io.BytesIO()
        torch.save({"step": step, "model": model.state_dict(), "optim": opt.state_dict()}, buf)
        atomic_write_bytes(resume, buf.getvalue())

    model.train()
    bar = tqdm(range(start, t.steps), initial=start, total=t.steps, desc="train", disable=not progress,
               dynamic_ncols=True)
    for step in bar:
        if step in ckpt_steps and not (step == start and resume.is_file()):
            checkpoint(step)
            if progress:
                bar.set_postfix(test_acc=rows[-1]["value"], loss=f"{rows[-2]['value']:.3g}")
        if stop_after is not None and step >= stop_after:
            bar.close()
            return Run(run_dir)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        batch = data.batch(step).to(device)
        loss = task.loss(model(batch.tokens), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
    bar.close()
    checkpoint(t.steps)
    return Run(run_dir)
