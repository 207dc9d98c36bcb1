"""Continuing chains (estimate_llc's init_weights): starting at w* is the default, a continued chain
needs no burn-in again, and a bad start gets one clear error."""
import numpy as np
import pytest
import torch

from llc_watch.llc import LLCError, estimate_llc, exact
from llc_watch.llc.estimator import select_params
from llc_watch.llc.sampler import FlatParams

torch.set_num_threads(1)
# ε·nβ small against the curvature (relaxation ~200 steps), so chains started at w* take many
# steps to spread out: the burn-in matters, which is what continuing must save
SET = dict(epsilon=4e-5, gamma=1.0, chains=16, batch_size=64, observe_every=0)


def case():
    model, loss_fn, data, lam = exact.make_regular(10, 2000, seed=0)
    return model, loss_fn, data


def test_starting_at_w_star_is_the_default():
    model, loss_fn, data = case()
    w_star = FlatParams(model, select_params(model, None)).w_star
    for vectorized in (True, False):
        a = estimate_llc(model, loss_fn, data, draws=20, burn_in=5, seed=3, vectorized=vectorized, **SET)
        b = estimate_llc(model, loss_fn, data, draws=20, burn_in=5, seed=3, vectorized=vectorized,
                         init_weights=w_star.expand(16, -1).clone(), **SET)
        assert a.loss_traces == b.loss_traces and a.llc_per_chain == b.llc_per_chain
        assert b.hyperparameters["continued"] and not a.hyperparameters["continued"]


def test_a_continued_chain_needs_no_burn_in():
    model, loss_fn, data = case()
    burnt = estimate_llc(model, loss_fn, data, draws=400, burn_in=600, seed=0, **SET)
    # the first 20 steps after the burnt-in chains' end, and the first 20 from w*
    cont = estimate_llc(model, loss_fn, data, draws=20, burn_in=0, seed=1, init_weights=burnt.final_weights, **SET)
    cold = estimate_llc(model, loss_fn, data, draws=20, burn_in=0, seed=1, **SET)
    # tolerances: 4 cross-chain standard errors of the difference (measured gap ~7-8 of them)
    assert abs(cont.llc_mean - burnt.llc_mean) < 4 * np.hypot(cont.llc_stderr, burnt.llc_stderr)
    # from w*, the first draws read low: the chains are still climbing out of the minimum
    assert cont.llc_mean - cold.llc_mean > 4 * np.hypot(cont.llc_stderr, cold.llc_stderr)
    assert cold.llc_mean < 0.3 * burnt.llc_mean


def test_a_bad_start_is_one_clear_error():
    model, loss_fn, data = case()
    with pytest.raises(LLCError, match=r"init_weights has shape \(3, 10\).*\[16, 10\]"):
        estimate_llc(model, loss_fn, data, draws=5, burn_in=0, init_weights=torch.zeros(3, 10), **SET)
    bad = torch.zeros(16, 10)
    bad[2, 4] = float("nan")
    with pytest.raises(LLCError, match="non-finite.*start afresh"):
        estimate_llc(model, loss_fn, data, draws=5, burn_in=0, init_weights=bad, **SET)
