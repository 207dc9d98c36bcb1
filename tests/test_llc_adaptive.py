"""`llc-watch llc RUN --adaptive` on a tiny trained run: the table it writes, resuming, and its spend."""
import json
import shutil

import numpy as np
import pytest
import torch

from llc_watch.analyses.llc import checkpoint_seed
from llc_watch.analyses.llc_adaptive import ADAPTIVE_FILE, adaptive_llc
from llc_watch.cli import main
from llc_watch.run import open_run

torch.set_num_threads(1)
# the dense budget: 32 draws per chain; the first pass gets 32 // 8 = 4 on every other checkpoint
LLC = {"chains": 2, "draws": 32, "burn_in": 4, "n_data": 128, "batch_size": 32, "threads": 1,
       "epsilon": 1e-4, "gamma": 100.0, "observe_every": 0}
ADAPTIVE = {"first_every": 2, "max_rounds": 2, "resamples": 30}


@pytest.fixture
def run(tiny_run, tmp_path):
    """A private copy of the shared tiny run (this test writes into it)."""
    shutil.copytree(tiny_run.dir, tmp_path / "run")
    return open_run(tmp_path / "run")


def result_files(run):
    return {p.name: p.stat().st_mtime_ns for p in (run.dir / "results" / "llc").glob("*.json")}


def test_adaptive_writes_draws_per_checkpoint_resumes_and_spends_less(run):
    table = adaptive_llc(run.dir, LLC, ADAPTIVE, progress=False)
    n_ckpt = len(run.checkpoints())
    assert 0 < len(table) <= n_ckpt and table["step"].is_monotonic_increasing
    written = run.table("llc")
    assert written["step"].tolist() == table["step"].tolist()
    # draws per checkpoint: the sum over its estimates, each on its own seed
    est = [json.loads(e) for e in written["estimates"]]
    assert written["draws"].tolist() == [sum(x["draws"] for x in e) for e in est]
    assert written["draws"].min() >= 4 and written["draws"].max() <= 32 + 4
    seeds = [x["seed"] for e in est for x in e]
    assert len(set(seeds)) == len(seeds)
    assert written["seed"].tolist() == [checkpoint_seed({"seed": 0}, s) for s in written["step"]]
    # refinements continue the checkpoint's chains (no burn-in again): one lineage per checkpoint,
    # its segments numbered, and the row's value the mean over every draw of its chains
    assert any(len(e) > 1 for e in est), "the loop refined nothing: the test exercises no continuation"
    for e in est:
        assert [x["lineage"] for x in e] == ["r0"] * len(e) and [x["segment"] for x in e] == list(range(len(e)))
        assert [x["burn_in"] for x in e] == [4] + [0] * (len(e) - 1)
    records = {}
    for p in (run.dir / "results" / "llc").glob("*.json"):
        r = json.loads(p.read_text())
        records.setdefault(r["step"], []).append(r["rows"][0])
    for _, row in written.iterrows():
        segs = sorted(records[row["step"]], key=lambda r: r["segment"])
        per = np.array([json.loads(r["llc_per_chain"]) for r in segs], float)
        d = np.array([r["draws_per_chain"] for r in segs], float)
        chains = per.T @ d / d.sum()
        assert row["value"] == pytest.approx(chains.mean())
        assert row["stderr"] == pytest.approx(chains.std(ddof=1) / np.sqrt(2))
    # the chains' saved state: only each checkpoint's latest segment is kept
    states = sorted(p.name for p in (run.dir / "results" / "llc" / "chains").glob("*.npy"))
    assert states == sorted(f"step_{s:07d}-r0-{len(e) - 1}.npy" for s, e in zip(written["step"], est))
    # the spend: chains x (burn-in + draws) per estimate, less than the dense job at 32 draws everywhere
    assert table.attrs["sgld_steps"] == sum(2 * (x["burn_in"] + x["draws"]) for e in est for x in e)
    assert table.attrs["sgld_steps"] < table.attrs["dense_sgld_steps"] == n_ckpt * 2 * (4 + 32)
    log = json.loads((run.dir / ADAPTIVE_FILE).read_text())
    assert log["sgld_steps"] == table.attrs["sgld_steps"] and log["history"][0]["round"] == 0

    # a rerun samples nothing and writes the same table
    files = result_files(run)
    assert len(files) == sum(len(e) for e in est)
    again = adaptive_llc(run.dir, LLC, ADAPTIVE, progress=False)
    assert result_files(run) == files
    assert again[["step", "value", "stderr", "draws"]].equals(table[["step", "value", "stderr", "draws"]])

    # killed before its last fresh estimate was saved: the rerun redoes only that one (a continued
    # segment's record is written before its predecessor's state is deleted, so a kill never loses both)
    fresh = [k for k in files
             if json.loads((run.dir / "results" / "llc" / k).read_text())["rows"][0]["segment"] == 0]
    last = max(fresh, key=files.get)
    (run.dir / "results" / "llc" / last).unlink()
    (run.dir / "llc.csv").unlink()
    resumed = adaptive_llc(run.dir, LLC, ADAPTIVE, progress=False)
    now = result_files(run)
    assert set(now) == set(files) and {k for k in now if now[k] != files[k]} == {last}
    assert resumed["step"].tolist() == table["step"].tolist() and resumed["draws"].tolist() == table["draws"].tolist()


def test_adaptive_from_the_command_line(run, capsys):
    argv = ["llc", str(run.dir), "--adaptive", "--quiet"] + [
        f"--{k.replace('_', '-')}={v}" for k, v in {**LLC, **ADAPTIVE}.items()]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "adaptive:" in out and "% of the dense run's" in out and "draws" in out
    # the stage map reads the adaptive table as it reads the dense one
    from llc_watch.analyses import run_signals
    signals, _, _ = run_signals(run.dir)
    assert signals["llc"].step.tolist() == sorted(run.table("llc")["step"].tolist())


def test_adaptive_options_need_the_flag_and_are_checked(run, capsys):
    assert main(["llc", str(run.dir), "--first-every", "2"]) == 2
    assert "only with --adaptive" in capsys.readouterr().err
    assert main(["llc", str(run.dir), "--adaptive", "--growth", "1"]) == 2
    assert "growth" in capsys.readouterr().err


def test_refinement_adds_checkpoints_by_replaying_training(run, monkeypatch):
    """A candidate the run never saved (a log-midpoint of its schedule) is written by retracing
    training when the loop asks for it, then estimated like any checkpoint; a rerun replays nothing."""
    import llc_watch.analyses.llc_adaptive as la
    real, asked = la.adaptive_estimate, []

    def loop(estimate, steps, s, candidates=(), seed=0, cumulative=False, last_resort=()):
        new = [c for c in last_resort if c not in set(steps)][:1]
        assert new, "no replay candidates offered"
        v, e = estimate(np.array(new, float), 4)          # what refinement does inside an interval
        asked.append((new[0], float(v[0])))
        return real(estimate, steps, s, candidates=candidates, seed=seed, cumulative=cumulative,
                    last_resort=last_resort)

    monkeypatch.setattr(la, "adaptive_estimate", loop)
    own = [c.step for c in run.checkpoints()]
    adaptive_llc(run.dir, LLC, ADAPTIVE, progress=False)
    step, value = asked[0]
    assert step not in own and np.isfinite(value)
    assert sorted(c.step for c in run.checkpoints()) == sorted(own + [step])
    log = json.loads((run.dir / ADAPTIVE_FILE).read_text())
    assert log["replayed_checkpoints"] == [step] and log["checkpoints"] == len(own)
    adaptive_llc(run.dir, LLC, ADAPTIVE, progress=False)
    assert json.loads((run.dir / ADAPTIVE_FILE).read_text())["replayed_checkpoints"] == []
    assert asked[1] == asked[0]                             # the same estimate, read back


def test_a_torn_chain_state_means_fresh_chains_not_a_failure(run, monkeypatch):
    # the loop is scripted (one checkpoint, fixed draws) so that the second run must go one estimate
    # past the first, from a torn state: which checkpoints the real loop refines depends on the
    # sampled values, which differ in the last bits between machines
    import types
    import llc_watch.analyses.llc_adaptive as la

    def scripted(draws):
        def loop(estimate, steps, s, **kw):
            st = np.array([steps[len(steps) // 2]], float)
            for d in draws:
                v, e = estimate(st, d)
            return types.SimpleNamespace(steps=list(st), values=v, stderr=e, stopped="scripted", history=[],
                                         boundaries=[])
        return loop

    monkeypatch.setattr(la, "adaptive_estimate", scripted([4, 4]))        # a lineage of two segments
    adaptive_llc(run.dir, LLC, ADAPTIVE, progress=False)
    states = list((run.dir / "results" / "llc" / "chains").glob("*.npy"))
    assert len(states) == 1                          # the last segment's chains, kept to continue from
    states[0].write_bytes(b"torn")                   # killed mid-write by something other than us
    monkeypatch.setattr(la, "adaptive_estimate", scripted([4, 4, 8]))     # the same two, then one more
    table = adaptive_llc(run.dir, LLC, ADAPTIVE, progress=False)
    est = [x for e in table["estimates"] for x in json.loads(e)]
    assert [(x["lineage"], x["segment"]) for x in est][:2] == [("r0", 0), ("r0", 1)]   # read back
    # the third estimate needed the torn state: a fresh set of chains (with burn-in) was sampled
    assert (est[2]["lineage"], est[2]["segment"], est[2]["burn_in"]) == ("r2", 0, 4), est
    assert table["value"].notna().all()
