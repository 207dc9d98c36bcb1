"""Fourier progress measures on hand-built Fourier models, and the per-checkpoint driver."""
import math

import pytest
import torch

from llc_watch.fourier import (excluded_logits, fourier_basis, frequency_power, key_frequencies,
                               logit_frequency_power, neuron_frequency_fve, restricted_logits)

P = 13


def pairs(p=P):
    return torch.arange(p).repeat_interleave(p), torch.arange(p).repeat(p)   # index a * p + b


def fourier_logits(freqs, p=P, scale=3.0):
    """The grokked algorithm's logits: sum_k cos(2 pi k (a + b - c) / p), largest at c = a + b."""
    a, b = pairs(p)
    c = torch.arange(p)
    return scale * sum(torch.cos(2 * math.pi * k * ((a + b)[:, None] - c[None]) / p) for k in freqs)


def ce(logits):
    a, b = pairs()
    return float(torch.nn.functional.cross_entropy(logits, (a + b) % P))


def test_restricted_and_excluded_loss_as_defined():
    key = [2, 5]
    L = fourier_logits(key)
    full = ce(L)
    assert full < 0.2                                               # the model solves the task
    # keep the key frequencies: nothing lost; remove them: logits constant, loss = ln p
    assert ce(restricted_logits(L, P, key)) == pytest.approx(full, abs=1e-4)
    assert ce(excluded_logits(L, P, key)) == pytest.approx(math.log(P), abs=1e-4)
    # the wrong frequencies: restricted keeps nothing, excluded removes nothing
    assert ce(restricted_logits(L, P, [1, 3])) == pytest.approx(math.log(P), abs=1e-4)
    assert ce(excluded_logits(L, P, [1, 3])) == pytest.approx(full, abs=1e-4)
    # one of two key frequencies: in between
    half = ce(restricted_logits(L, P, [2]))
    assert full < half < math.log(P)
    power = logit_frequency_power(L, P)
    assert key_frequencies(power) == key and power[[2, 5]].sum() == pytest.approx(1.0, abs=1e-5)


def test_embedding_and_neuron_frequencies():
    x = torch.arange(P).float()
    W = torch.stack([torch.cos(2 * math.pi * 4 * x / P), torch.sin(2 * math.pi * 4 * x / P),
                     0.1 * torch.cos(2 * math.pi * 1 * x / P)], 1)          # [p, d]
    power = frequency_power(W, P)
    assert int(power.argmax()) == 4 and power[4] > 0.98
    a, b = pairs()
    neurons = torch.stack([torch.cos(2 * math.pi * 3 * (a + b) / P),          # frequency 3 product terms
                           torch.relu(torch.cos(2 * math.pi * 6 * a / P) + torch.cos(2 * math.pi * 6 * b / P))],
                          -1).reshape(P, P, 2)
    fve = neuron_frequency_fve(neurons, P)
    assert fve[3, 0] == pytest.approx(1.0, abs=1e-5)
    assert int(fve[:, 1].argmax()) == 6 and fve[6, 1] > 0.5
    B, freq = fourier_basis(P)
    assert torch.allclose(B @ B.T, torch.eye(P), atol=1e-5)


def test_compute_fourier_on_a_small_run_and_rerun_skips(tmp_path, monkeypatch):
    from llc_watch.config import RunConfig
    from llc_watch.analyses.fourier import compute_fourier
    from llc_watch.train import train
    import llc_watch.analyses.fourier as Fm
    cfg = RunConfig.from_preset("modular-addition").with_overrides([
        "task.settings.p=13", "model.d_model=32", "model.d_mlp=64", "train.steps=60",
        "checkpoints.n_log=2", "checkpoints.n_linear=2"])
    run = train(cfg, tmp_path / "mod", progress=False)
    df = compute_fourier(run.dir, progress=False)
    assert (run.dir / "fourier.csv").is_file()
    assert set(df.step) == {c.step for c in run.checkpoints()}
    assert {"embed_power", "mlp_power", "mlp_neurons", "restricted_loss", "excluded_loss", "loss"} <= set(df.measure)
    one = df[(df.step == df.step.max()) & (df.measure == "loss") & (df.split == "train")].value
    assert len(one) == 1 and math.isfinite(float(one.iloc[0]))
    calls = []
    monkeypatch.setattr(Fm, "fourier_rows", lambda *a, **k: calls.append(1))
    assert len(compute_fourier(run.dir, progress=False)) == len(df) and calls == []
    # Fourier reaches the stage map through its signals, with no special case anywhere else
    from llc_watch.analyses import run_signals
    signals, _, missing = run_signals(run.dir)
    assert {"fourier:key_power", "fourier:restricted_loss"} <= set(signals)
    assert len(signals["fourier:key_power"]) == len(run.checkpoints())
    assert "fourier" not in missing
    # its operands and answer are categorical features, so ablations apply; not run yet, it names its command
    assert "llc-watch ablate" in missing["ablations"]
