"""`crosscode_run`: a crosscoder over a run's checkpoints, from activations to tidy tables in the run folder.

Steps: pick K log-spaced checkpoints; collect activations of fixed inputs at the site and positions
(one file per snapshot, resumable); train the crosscoder; read each feature (emergence, trajectory
type, top examples, correlation with the task's labelled features); ablate the most used features
and each label's best match at every snapshot. Writes, atomically, into the run folder:

    crosscoder_features.csv   one row per feature: emergence, trajectory, frequency, best label, ablation
    crosscoder_norms.csv      tidy: feature, snapshot, step, decoder_norm, relative_norm, cosine
    crosscoder_training.csv   tidy: train_step, measure, snapshot, step, value (loss curve; final FVU per
                              snapshot, L0, dead latents)
    crosscoder_labels.csv     tidy: feature, label, corr, n_rows (every feature x every labelled quantity)
    crosscoder_examples.csv   top activating (example, position) rows per feature, with the input text
    crosscoder_ablations.csv  tidy: feature, step, measure (loss_rise | acc_drop), value, clean
    crosscoder.safetensors    the weights, per-snapshot scales and steps; settings in the metadata
    crosscoder_done.json      written last: the settings key; a rerun with the same key reads the tables

    >>> tables = crosscode_run("runs/addition", CrosscoderSettings())     # doctest: +SKIP
    >>> tables["features"].query("trajectory != 'dead'").sort_values("emergence_step")  # doctest: +SKIP
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save

from ..checkpoints import open_run
from ..io import atomic_write_bytes, atomic_write_csv, atomic_write_json
from ..tasks import derive_seed
from .ablate import ablate_at_snapshot, ablation_onset
from .collect import PositionCentered, answer_positions, collect_activations, fixed_inputs, resolve_site, select_snapshots
from .features import best_label, cross_snapshot_cosine, emergence_index, match_labels, top_examples, trajectory_types
from .settings import CrosscoderSettings
from .train import CrosscoderFit, _resolve_device, train_crosscoder

TABLES = ("features", "norms", "training", "labels", "examples", "ablations")
DONE = "crosscoder_done.json"


def _read_tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(run_dir / f"crosscoder_{name}.csv") for name in TABLES}


def _finished(run_dir: Path, key: str) -> bool:
    done = run_dir / DONE
    if not done.is_file():
        return False
    try:
        same = json.loads(done.read_text()).get("key") == key
    except json.JSONDecodeError:
        return False
    return same and all((run_dir / f"crosscoder_{n}.csv").is_file() for n in TABLES)


@torch.no_grad()
def encode_store(fit: CrosscoderFit, store, batch_size: int = 4096) -> torch.Tensor:
    """The code [N, m] of every row of a store (or [K, N, d] tensor), batch by batch."""
    N = store.shape[1]
    parts = []
    for i in range(0, N, batch_size):
        idx = np.arange(i, min(N, i + batch_size))
        x = store.rows(idx) if hasattr(store, "rows") else store[:, idx]
        parts.append(fit.encode_raw(x).cpu())
    return torch.cat(parts)


def _labels(batch, positions: list[int], task) -> dict[str, torch.Tensor]:
    """Labelled binary and numeric features at the rows (example-major, positions inner) as [N] floats."""
    out = {}
    for name, spec in task.features.items():
        if spec.kind in ("binary", "numeric") and name in batch.features:
            out[name] = batch.features[name][:, positions].reshape(-1).float()
    return out


def _example_text(task, tokens: torch.Tensor, position: int) -> str:
    if tokens.dtype.is_floating_point:
        return f"(continuous input) @ {position}"
    toks = [task.vocab[int(t)] for t in tokens]
    toks[position] = f"[{toks[position]}]"
    return " ".join(toks)


def crosscode_run(run_dir: str | Path, settings: CrosscoderSettings | dict | None = None,
                  progress: bool = False) -> dict[str, pd.DataFrame]:
    """Run the crosscoder analysis on a run folder; returns {table name: DataFrame} (see module docstring).

    Idempotent: with the same settings and checkpoints it reads the finished tables back.
    """
    s = settings if isinstance(settings, CrosscoderSettings) else CrosscoderSettings.from_dict(settings)
    run = open_run(run_dir)
    run_dir = run.dir
    available = [c.step for c in run.checkpoints()]
    if len(available) < 2:
        raise ValueError(f"{run_dir} has {len(available)} checkpoint(s); a crosscoder needs at least 2 snapshots")
    steps = select_snapshots(available, s.n_snapshots)
    ckpts = run.checkpoints(steps)
    key = s.key(steps, [c.fingerprint() for c in ckpts])
    if _finished(run_dir, key):
        return _read_tables(run_dir)
    t0 = time.time()
    timings = {}
    device = _resolve_device(s.device)
    task = run.task
    seed = derive_seed(run.config.seed, s.seed)
    batch = fixed_inputs(task, s.n_examples, seed)
    positions = list(s.positions) if s.positions is not None else answer_positions(batch)
    T = batch.tokens.shape[1]
    if max(positions) >= T:
        raise ValueError(f"crosscoder.positions={positions}: inputs have only {T} positions")
    P = len(positions)
    site = resolve_site(ckpts[-1].load_model(), s.site)

    cache = run_dir / "crosscoder_cache" / key
    store = collect_activations(run, steps, batch.tokens, site, positions, cache, s.chunk_size, device, progress)
    if s.center_positions:
        store = PositionCentered(store, P)
    timings["collect_s"] = time.time() - t0

    t1 = time.time()
    fit = train_crosscoder(store, s.n_latents, device=str(device), progress=progress, **s.train_kwargs())
    timings["train_s"] = time.time() - t1

    t2 = time.time()
    model = fit.model
    codes = encode_store(fit, store)                                        # [N*P, m]
    norms = model.decoder_norms().detach().cpu()                            # [K, m]
    fired = (codes > 0).any(0)
    em = emergence_index(norms, s.emergence_frac)
    types = trajectory_types(norms, s.emergence_frac, s.fade_frac, s.late_frac, fired)
    rel = norms / norms.max(0).values.clamp(min=1e-12)
    cos = cross_snapshot_cosine(model.W_dec.detach().cpu())
    steps_t = torch.tensor(steps)
    dn = norms.sum(0)
    importance = (codes.mean(0) * dn)                                       # mean contribution, normalised units

    labels = _labels(batch, positions, task)
    matches = match_labels(codes, labels)
    best = best_label(matches)

    # ablation: the most used features plus each label's best-matching feature
    alive = [i for i in range(s.n_latents) if types[i] != "dead"]
    chosen = sorted(alive, key=lambda i: -float(importance[i]))[: s.n_ablate]
    if len(matches):
        m = matches.dropna(subset=["corr"]).assign(a=lambda d: d["corr"].abs())
        for _, g in m.groupby("label"):
            top = int(g.sort_values("a", ascending=False)["feature"].iloc[0])
            if top not in chosen and top in alive:
                chosen.append(top)
    n_ab = min(s.n_ablate_examples, len(batch))
    ab_batch = batch[:n_ab]
    ab_codes = codes[: n_ab * P].view(n_ab, P, -1)
    dec_raw = fit.decoder_raw().cpu()                                       # [K, m, d]
    ab_rows = []
    if chosen:
        for k, ckpt in enumerate(ckpts):
            net = ckpt.load_model(device)
            ab_rows += ablate_at_snapshot(net, task, ab_batch, site, positions, ab_codes.to(device),
                                          dec_raw[k].to(device), chosen, ckpt.step)
    ablations = pd.DataFrame(ab_rows, columns=["feature", "step", "measure", "value", "clean"])
    onset = ablation_onset(ablations, "loss_rise").set_index("feature")
    final_acc = ablations[(ablations.measure == "acc_drop") & (ablations.step == steps[-1])].set_index("feature")["value"]

    feats = pd.DataFrame({
        "feature": range(s.n_latents),
        "emergence_index": em.tolist(),
        "emergence_step": [steps[i] if i >= 0 else np.nan for i in em.tolist()],
        "trajectory": types,
        "peak_step": steps_t[norms.argmax(0)].tolist(),
        "final_relative_norm": rel[-1].tolist(),
        "frequency": (codes > 0).float().mean(0).tolist(),
        "mean_activation": codes.mean(0).tolist(),
        "importance": importance.tolist(),
        "first_step": steps[0], "last_step": steps[-1],
    })
    feats = feats.merge(best, on="feature", how="left")
    feats["ablated"] = feats["feature"].isin(chosen)
    feats["ablation_onset_step"] = feats["feature"].map(onset["ablation_onset_step"]) if len(onset) else np.nan
    feats["ablation_loss_rise_final"] = feats["feature"].map(onset["ablation_final"]) if len(onset) else np.nan
    feats["ablation_acc_drop_final"] = feats["feature"].map(final_acc) if len(final_acc) else np.nan

    K, m = norms.shape
    norms_df = pd.DataFrame({
        "feature": np.tile(np.arange(m), K), "snapshot": np.repeat(np.arange(K), m),
        "step": np.repeat(steps, m), "decoder_norm": norms.flatten().numpy(),
        "relative_norm": rel.flatten().numpy(), "cosine": cos.flatten().numpy(),
    })
    training = fit.history.copy()
    training["step"] = training["snapshot"].map(lambda k: steps[k] if k >= 0 else np.nan)

    ex = top_examples(codes, s.n_top_examples)
    ex["example"], ex["position"] = ex["row"] // P, ex["row"].map(lambda r: positions[r % P])
    ex["text"] = [_example_text(task, batch.tokens[e], p) for e, p in zip(ex["example"], ex["position"])]
    ex = ex.drop(columns="row")
    timings["analyse_s"] = time.time() - t2

    tables = {"features": feats, "norms": norms_df, "training": training, "labels": matches,
              "examples": ex, "ablations": ablations}
    for name, df in tables.items():
        atomic_write_csv(run_dir / f"crosscoder_{name}.csv", df)
    weights = {"W_enc": model.W_enc.detach().cpu().contiguous(), "W_dec": model.W_dec.detach().cpu().contiguous(),
               "b_enc": model.b_enc.detach().cpu().contiguous(), "b_dec": model.b_dec.detach().cpu().contiguous(),
               "log_threshold": model.log_threshold.detach().cpu().contiguous(),
               "batch_threshold": model.batch_threshold.detach().cpu().reshape(1).contiguous(),
               "scales": fit.scales.contiguous(), "steps": torch.tensor(steps)}
    meta = {"settings": json.dumps(s.to_dict()), "site": site, "positions": json.dumps(positions), "key": key}
    atomic_write_bytes(run_dir / "crosscoder.safetensors", save(weights, metadata=meta))
    timings["total_s"] = time.time() - t0
    atomic_write_json(run_dir / DONE, {"key": key, "settings": s.to_dict(), "steps": steps, "site": site,
                                       "positions": positions, "metrics": fit.metrics, "timings": timings})
    if not s.keep_activations:
        shutil.rmtree(cache, ignore_errors=True)
        try:
            (run_dir / "crosscoder_cache").rmdir()
        except OSError:
            pass
    return tables


__all__ = ["crosscode_run", "encode_store", "TABLES"]
