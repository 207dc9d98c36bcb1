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
        if self.train_set is None:
            return sampled_batch(self.task, self.cfg, step)
        idx = self.indices(step)
        return self.train_set if idx is None else self.train_set[idx]

    def indices(self, step: int) -> torch.Tensor | None:
        """Rows of train_set in step's batch (None: the whole set, full-batch training)."""
        t, n = self.cfg.train, len(self.train_set)
        if t.batch_size >= n:
            return None
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "batch", step))
        return torch.randperm(n, generator=g)[: t.batch_size]


def sampled_batch(task: Task, cfg: RunConfig, step: int) -> Batch:
    """Step's training batch for runs trained on fresh samples: a pure function of (seed, step)."""
    return task.sample(cfg.train.batch_size, derive_seed(cfg.seed, "batch", step))


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


def new_model_and_optimizer(cfg: RunConfig, task: Task, device) -> tuple[Transformer, torch.optim.AdamW]:
    """The run's initial model (seeded from the run's seed) on `device`, and its AdamW."""
    t = cfg.train
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = Transformer(cfg.model_config(task)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)
    return model, opt


def _training_arrays(task: Task, cfg: RunConfig, step: int) -> tuple:
    """A worker's job: step's batch as the three arrays training reads (features are not sent)."""
    b = sampled_batch(task, cfg, step)
    return b.tokens.numpy(), b.targets.numpy(), b.loss_mask.numpy()


class BatchPrefetcher:
    """Step batches for runs on fresh samples, made ahead by worker processes (or threads).

    Each worker computes `sampled_batch(task, cfg, step)`, the very batch the plain loop makes,
    so the run's numbers do not change; the main process only pins and copies it (without
    waiting) to the device. Why processes: batch generation is Python/numpy work that holds the
    GIL (the icl-regression task's least-squares features cost ~60 ms a batch on one core).
    """

    def __init__(self, task: Task, cfg: RunConfig, device, workers: int, use_threads: bool = False):
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
        self.task, self.cfg, self.device = task, cfg, torch.device(device)
        if use_threads:
            self.pool = ThreadPoolExecutor(max_workers=workers)
        else:
            import multiprocessing as mp
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
        self.depth = 4 * workers
        self.pending: dict = {}
        self.pin = self.device.type == "cuda"

    def get(self, step: int, stop: int) -> Batch:
        for s in range(step, min(stop, step + self.depth)):
            if s not in self.pending:
                self.pending[s] = self.pool.submit(_training_arrays, self.task, self.cfg, s)
        for s in [s for s in self.pending if s < step]:      # a jump (resume): drop stale work
            self.pending.pop(s).cancel()
        tokens, targets, mask = (torch.from_numpy(a) for a in self.pending.pop(step).result())
        if self.pin:
            tokens, targets, mask = (x.pin_memory() for x in (tokens, targets, mask))
        nb = self.pin
        return Batch(tokens.to(self.device, non_blocking=nb), targets.to(self.device, non_blocking=nb),
                     mask.to(self.device, non_blocking=nb), {})

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class Stepper:
    """The optimiser steps of a run, plain or fast; both give the same weights for a seed.

    plain: the textbook loop (make the batch, copy it, forward, backward, clip, AdamW).
    fast: the same arithmetic with the host kept off the GPU's critical path: a fixed training
        set lives on the device (a step's batch is one gather with indices made on the host, or
        the whole set for full-batch training); batches of fresh samples are made ahead by worker
        processes and copied without waiting; no step reads a value back from the device. On
        CUDA the step (forward, backward, clipping, AdamW in its capturable form) is captured as
        a CUDA graph after CAPTURE_WARMUP steps and replayed; on a CPU nothing is captured and
        the fast loop gives the plain loop's weights bit for bit (tests/test_train_speed_paths.py).
        AdamW's capturable form keeps step counts on the device, so on CUDA the two loops agree
        to float rounding rather than bitwise.
    `mode` says which ran. Evaluation happens only at checkpoints (in `train`), not here.
    """

    CAPTURE_WARMUP = 3   # eager steps (on a side stream) before the step is captured

    def __init__(self, cfg: RunConfig, task: Task, data: TrainingData, model, opt, device,
                 fast: bool = True, workers: int | None = None, use_threads: bool = False,
                 capture: bool | None = None):
        import os
        self.cfg, self.task, self.data, self.model, self.opt = cfg, task, data, model, opt
        self.device = torch.device(device)
        self.prefetch = None
        self.train_set = None
        self.mode = "plain"
        self.graph = self.static = self.static_loss = None
        self.capture = bool(fast and self.device.type == "cuda") if capture is None else capture
        if self.capture and self.device.type != "cuda":
            raise ConfigError("capturing the training step needs a CUDA device")
        self.warm_steps, self.capture_error = 0, None
        if self.capture:
            _make_capturable(opt, self.device)
        if not fast:
            return
        if data.train_set is not None:
            self.train_set = data.train_set.to(self.device)
            self.mode = "fast (training set on the device)"
        else:
            n_workers = workers if workers is not None else min(8, max(0, (os.cpu_count() or 1) - 2))
            if n_workers > 0 and (self.device.type == "cuda" or workers is not None):
                self.prefetch = BatchPrefetcher(task, cfg, self.device, n_workers, use_threads)
                self.mode = f"fast ({n_workers} batch workers)"

    def batch(self, step: int, stop: int) -> Batch:
        if self.train_set is not None:
            idx = self.data.indices(step)
            if idx is None:
                return self.train_set
            if self.device.type == "cuda":
                idx = idx.pin_memory().to(self.device, non_blocking=True)
            return self.train_set[idx]
        if self.prefetch is not None:
            return self.prefetch.get(step, stop)
        return self.data.batch(step).to(self.device)

    def _set_lr(self, step: int) -> None:
        lr = lr_at(step, self.cfg)
        for g in self.opt.param_groups:
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].fill_(lr)          # a captured step reads its learning rate from here
            else:
                g["lr"] = lr

    def _forward_backward_update(self, batch: Batch) -> torch.Tensor:
        loss = self.task.loss(self.model(batch.tokens), batch)
        loss.backward()
        if self.cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.opt.step()
        return loss

    def step(self, step: int, stop: int) -> torch.Tensor:
        self._set_lr(step)
        batch = self.batch(step, stop)
        if self.graph is not None and self._feed(batch):
            self.graph.replay()
            return self.static_loss
        if not self.capture or self.capture_error is not None:
            self.opt.zero_grad(set_to_none=True)
            return self._forward_backward_update(batch)
        # warm-up steps run on a side stream (as CUDA graph capture asks), then the step is captured
        side, main = self._side(), torch.cuda.current_stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            self.opt.zero_grad(set_to_none=True)
            loss = self._forward_backward_update(batch)
        main.wait_stream(side)
        self.warm_steps += 1
        if self.warm_steps == self.CAPTURE_WARMUP and self.graph is None:
            self._capture(batch)
        return loss

    def _side(self):
        if not hasattr(self, "_side_stream"):
            self._side_stream = torch.cuda.Stream(self.device)
        return self._side_stream

    def _capture(self, batch: Batch) -> None:
        """Record forward, backward, clipping and AdamW as one CUDA graph on static inputs."""
        full = self.train_set is not None and batch is self.train_set
        self.static = batch if full else Batch(batch.tokens.clone(), batch.targets.clone(),
                                               batch.loss_mask.clone(), {})
        side = self._side()
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            self.opt.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
                self.static_loss = self._forward_backward_update(self.static)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.graph = graph
            self.mode += ", step captured"
        except Exception as e:  # noqa: BLE001 - the eager step gives the same update; say so in mode
            self.capture_error = f"{type(e).__name__}: {e}"
            self.mode += f", capture failed ({self.capture_error[:120]}); eager steps"
            self.opt.zero_grad(set_to_none=True)

    def _feed(self, batch: Batch) -> bool:
        """Copy batch into the captured step's inputs; False if its shapes differ (run eager)."""
        st = self.static
        if batch is st:
            return True
        if (batch.tokens.shape != st.tokens.shape or batch.targets.shape != st.targets.shape
                or batch.loss_mask.shape != st.loss_mask.shape):
            return False
        st.tokens.copy_(batch.tokens, non_blocking=True)
        st.targets.copy_(batch.targets, non_blocking=True)
        st.loss_mask.copy_(batch.loss_mask, non_blocking=True)
        return True

    def run(self, start: int, stop: int, on_step=None) -> None:
        """Steps start .. stop − 1."""
        for s in range(start, stop):
            self.step(s, stop)
            if on_step:
                on_step(s)

    def close(self) -> None:
        if self.prefetch is not None:
            self.prefetch.close()


def _make_capturable(opt: torch.optim.Optimizer, device) -> None:
    """AdamW in its capturable form: step counts and the learning rate as device tensors, so a
    captured step reads them instead of baking in Python numbers."""
    for g in opt.param_groups:
        g["capturable"] = True
        g["lr"] = torch.tensor(float(g["lr"]), device=device)
    for st in opt.state.values():
        if "step" in st:
            st["step"] = st["step"].to(device=device, dtype=torch.float32)


def portable_optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """opt.state_dict() in the plain form (learning rate a number, step counts on the CPU), so a
    resume file loads into any optimizer on any device whichever loop wrote it."""
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        if isinstance(g.get("lr"), torch.Tensor):
            g["lr"] = float(g["lr"])
        if "capturable" in g:
            g["capturable"] = False
    sd["state"] = {k: {n: (v.detach().cpu() if n == "step" and isinstance(v, torch.Tensor) else v)
                       for n, v in st.items()} for k, st in sd["state"].items()}
    return sd


def train(cfg: RunConfig, run_dir: str | Path, progress: bool = True, stop_after: int | None = None,
          fast: bool = True) -> Run:
    """Train `cfg` into `run_dir`, resuming from its last checkpoint if it has one.

    stop_after: stop (as if killed) once this many steps are done; for tests of resuming.
    fast: the fast step loop (`Stepper`); False runs the plain loop. Same weights either way.
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
    model, opt = new_model_and_optimizer(cfg, task, device)
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
        torch.save({"step": step, "model": model.state_dict(), "optim": portable_optimizer_state(opt)}, buf)
        atomic_write_bytes(resume, buf.getvalue())

    model.train()
    bar = tqdm(total=t.steps, initial=start, desc="train", disable=not progress, dynamic_ncols=True)
    stepper = Stepper(cfg, task, data, model, opt, device, fast=fast)
    # the steps between checkpoints run without a look at the device's values; a checkpoint
    # (evaluation, saving) comes before the step of its number, as in a step-by-step loop
    stop_early = None if stop_after is None else max(stop_after, start)
    stops = sorted({s for s in ckpt_steps if start <= s < t.steps} | {t.steps}
                   | ({stop_early} if stop_early is not None and stop_early < t.steps else set()))
    step = start
    try:
        for stop in stops:
            stepper.run(step, stop)
            bar.update(stop - step)
            step = stop
            if step >= t.steps:
                break
            if step in ckpt_steps and not (step == start and resume.is_file()):
                checkpoint(step)
                if progress:
                    bar.set_postfix(test_acc=rows[-1]["value"], loss=f"{rows[-2]['value']:.3g}")
            if stop_early is not None and step >= stop_early:
                return Run(run_dir)
    finally:
        stepper.close()
        bar.close()
    checkpoint(t.steps)
    return Run(run_dir)


def replay_checkpoints(run_dir: str | Path, steps, progress: bool = False, rtol: float = 1e-4) -> list[int]:
    """Write checkpoints at `steps` (new ones, inside the run's training) by retracing its training
    from step 0 with its own config: the data at step s is a pure function of (seed, s) and the
    initial weights of the seed, so the replay walks the run's path again. This is how the adaptive
    LLC adds checkpoints inside a wide boundary interval after training is done.

    The replay is checked against the run: at every saved checkpoint it passes, its weights must
    match the saved ones (to `rtol` of the largest weight); otherwise a CheckpointError names the step
    (a run trained on another device or torch build may not retrace bit for bit) and nothing is
    written. Steps that already have a checkpoint are left alone. Returns the steps written.

        >>> replay_checkpoints("runs/addition", [700, 800])   # doctest: +SKIP
        [700, 800]
    """
    from llc_watch.checkpoints import checkpoint_name
    run = Run(run_dir)
    cfg = run.config
    have = {int(c.step): c for c in run.checkpoints()}
    want = sorted({int(s) for s in steps} - set(have))
    if not want:
        return []
    if want[0] < 0 or want[-1] > cfg.train.steps:
        raise ConfigError(f"replay_checkpoints: steps {want} must lie within the run's training, 0..{cfg.train.steps}")
    device = resolve_device(cfg.train.device)
    task = cfg.make_task()
    data = TrainingData(task, cfg)
    model, opt = new_model_and_optimizer(cfg, task, device)
    model.train()
    stepper = Stepper(cfg, task, data, model, opt, device, fast=True)
    checks = [s for s in have if s <= want[-1]]
    written, pending = [], []
    step = 0
    try:
        for stop in sorted(set(checks) | set(want)):
            stepper.run(step, stop)
            step = stop
            if stop in have:
                saved = have[stop].load_state()
                now = {k: v.detach().cpu() for k, v in model.state_dict().items()}
                scale = max(float(v.abs().max()) for v in saved.values() if v.numel())
                worst = max(float((now[k].float() - saved[k].float()).abs().max()) for k in saved)
                if worst > rtol * scale:
                    raise CheckpointError(
                        f"{run.dir}: replaying training does not retrace the run (weights differ by {worst:.3g} "
                        f"at step {stop}, more than {rtol:g} x the largest weight {scale:.3g}); it was trained on "
                        "another device or torch build. Train a run with the checkpoints you need instead")
            if stop in want:
                # held until the replay has passed its last check: a mismatch writes nothing
                pending.append((stop, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}))
    finally:
        stepper.close()
    for stop, state in pending:
        model.load_state_dict(state)
        save_checkpoint(run.dir, stop, model, cfg)
        written.append(stop)
        if progress:
            print(f"{run.dir}: replayed training to step {stop}: wrote checkpoints/{checkpoint_name(stop)}")
    return written
