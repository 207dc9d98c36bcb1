"""Probes and ablations for one checkpoint, all sites and positions, vs sklearn one probe at a time.

    .venv/bin/python benchmarks/bench_probes.py                       # addition preset architecture
    .venv/bin/python benchmarks/bench_probes.py --run runs/addition   # an existing run's last checkpoint

Without --run it trains the `addition` preset (8-bit, 2 layers, d_model 64) for --steps steps into
a temporary folder: the probe cost depends on the architecture and probe set, not on training.
Timings are single-threaded unless --threads says otherwise (the repo's CPU convention).
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="run folder (default: train the addition preset briefly)")
    ap.add_argument("--steps", type=int, default=300, help="training steps when --run is not given")
    ap.add_argument("--n-train", type=int, default=2048)
    ap.add_argument("--n-test", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-sklearn", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from llc_watch.ablations import DEFAULT_SETTINGS as AS, ablate_model
    from llc_watch.checkpoints import open_run
    from llc_watch.config import RunConfig
    from llc_watch.probes import binary_metrics, fit_checkpoint_probes, resolve_device, resolve_settings
    from llc_watch.activations import probe_set
    from llc_watch.tasks import derive_seed
    from llc_watch.train import train

    if a.run:
        run = open_run(a.run)
    else:
        cfg = RunConfig.from_preset("addition").with_overrides([f"train.steps={a.steps}", f"train.threads={a.threads}"])
        run = train(cfg, tempfile.mkdtemp(prefix="bench_probes_"), progress=False)
    ckpt = run.checkpoints()[-1]
    task, cfg = run.task, ckpt.config()
    device = resolve_device(a.device)
    model = ckpt.load_model(device)
    base = {"n_train": a.n_train, "n_test": a.n_test, "device": str(device)}
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)

    results = []

    def timed(name, fn, n):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        results.append((name, n, time.perf_counter() - t))
        return out

    # warm-up (allocations, kernels), then the measured runs
    fit_checkpoint_probes(model, task, resolve_settings({**base, "n_train": 64, "n_test": 32}), cfg.seed)
    plain = timed("batched probes (no controls)",
                  lambda: fit_checkpoint_probes(model, task, resolve_settings({**base, "shuffled": False}),
                                                cfg.seed, controls=False), None)
    n_probes = len(plain.fits)
    results[-1] = (results[-1][0], n_probes, results[-1][2])
    full = timed("batched probes + shuffled/majority controls",
                 lambda: fit_checkpoint_probes(model, task, resolve_settings(base), cfg.seed), 2 * n_probes)
    abl = timed("ablations (refit + proj/mean + 32 random)",
                lambda: ablate_model(model, task, {**AS, **base}, cfg.seed), None)
    n_abl = len({(r["feature"], r["position"]) for r in abl})
    results[-1] = (results[-1][0], n_abl, results[-1][2])

    agree = None
    if not a.skip_sklearn:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        ps = plain.probe_set
        labels = ps.batch.features

        def sklearn_all():
            accs = {}
            for (feat, site, pos), _ in plain.fits.items():
                X = plain.acts[site][:, plain.positions.index(pos)].cpu().double().numpy()
                y = labels[feat][:, pos].numpy()
                ok = ~torch.isnan(labels[feat][:, pos]).numpy()
                tr, te = ok.copy(), ok.copy()
                tr[ps.n_train:], te[:ps.n_train] = False, False
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    clf = LogisticRegression(C=100.0, max_iter=1000).fit(X[tr], y[tr])
                accs[(feat, site, pos)] = clf.score(X[te], y[te])
            return accs
        sk = timed("sklearn LogisticRegression, one at a time", sklearn_all, n_probes)
        agree = max(abs(sk[k] - v["accuracy"]) for k, v in plain.fits.items())

    ref = next((t for n, _, t in results if n.startswith("sklearn")), None)
    print(f"\ncheckpoint {ckpt.path} (step {ckpt.step}); task {task.name} {task.settings()}; "
          f"model {cfg.model.n_layers} layers, d_model {cfg.model.d_model}; device {device}; threads {a.threads}")
    print(f"probe set: {a.n_train} train + {a.n_test} test examples; binary features only in the sklearn baseline\n")
    print(f"{'what':48s} {'probes':>7s} {'seconds':>9s} {'vs sklearn':>11s}")
    for name, n, t in results:
        ratio = f"{ref / t:9.1f}x" if ref else "-"
        print(f"{name:48s} {n:7d} {t:9.2f} {ratio:>11s}")
    if agree is not None:
        print(f"\nlargest |test accuracy (batched) - test accuracy (sklearn)| over probes: {agree:.4f}")


if __name__ == "__main__":
    main()
