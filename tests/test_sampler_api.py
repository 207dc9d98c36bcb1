"""run_chains' options for calibration and the batched path: per-chain centres, per-chain
minibatch streams, a fixed-batch observable; vectorised == sequential, batched == separate runs."""
import numpy as np
import pytest
import torch

from llc_watch.llc.data import ChainMinibatchStreams, DataSource, chain_batch, stack_batches
from llc_watch.llc.sampler import FlatParams, SGLDSettings, SamplerError, make_flat_loss, run_chains
from llc_watch.model import ModelConfig, Transformer
from llc_watch.tasks import get_task

torch.set_num_threads(1)
S = SGLDSettings(epsilon=3e-4, nbeta=50.0, gamma=100.0)


def problem(seed=0, n=128):
    task = get_task("addition", n_bits=3)
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, vocab_size=5, n_ctx=task.seq_len))
    flat = FlatParams(model, {k: None for k, _ in model.named_parameters()})
    loss_of = make_flat_loss(model, lambda m, b: task.loss(m(b.tokens), b), flat)
    return flat, loss_of, task.sample(n, seed=0)


def per_chain_getter(data, chains, seed=3):
    src, streams = DataSource(data), ChainMinibatchStreams(len(data), 16, seed=seed, chains=chains)
    return lambda t: stack_batches([src.batch(i) for i in streams.indices(t)])


def test_vectorised_equals_sequential_with_centres_chain_batches_and_observable():
    flat, loss_of, data = problem()
    C = 3
    centers = flat.w_star + 0.01 * torch.randn(C, flat.w_star.numel(), generator=torch.Generator().manual_seed(1))
    kw = dict(chains=C, steps=12, get_batch=per_chain_getter(data, C), seed=0, center_loss=True,
              centers=centers, per_chain_batches=True, observe_batch=data[:40], observe_every=5,
              mala=True, draw_steps=range(6, 12))
    a, b = run_chains(loss_of, flat, S, vectorized=True, **kw), run_chains(loss_of, flat, S, vectorized=False, **kw)
    assert a.observe_steps == b.observe_steps == [0, 5, 10]
    for x, y in ((a.losses, b.losses), (a.center_losses, b.center_losses), (a.observed, b.observed),
                 (a.final_w, b.final_w), (a.mala_accept, b.mala_accept)):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-4, atol=1e-6)
    assert a.center_losses.shape == (C, 12) and a.observed.shape == (C, 3)
    # step 0: every chain sits at its own centre, so loss == centre loss on its own batch
    np.testing.assert_allclose(a.losses[:, 0], a.center_losses[:, 0], rtol=1e-6)
    assert len({round(float(v), 6) for v in a.losses[:, 3]}) == C        # chains really differ
    with torch.no_grad():
        obs0 = torch.stack([loss_of(centers[c], data[:40]) for c in range(C)])
    np.testing.assert_allclose(a.observed[:, 0], obs0, rtol=1e-5)


@pytest.mark.parametrize("vectorized", [True, False])
def test_per_chain_centres_equal_separate_problems(vectorized):
    (f1, l1, data), (f2, l2, _) = problem(0), problem(1)
    get = lambda t: data[16 * (t % 8):16 * (t % 8 + 1)]
    kw = dict(steps=10, get_batch=get, seed=0, center_loss=True, vectorized=vectorized,
              observe_batch=data[:32], observe_every=3)
    both = run_chains(l1, f1, S, chains=4, centers=torch.stack([f1.w_star] * 2 + [f2.w_star] * 2),
                      chain_ids=[0, 1, 0, 1], **kw)
    one, two = run_chains(l1, f1, S, chains=2, **kw), run_chains(l2, f2, S, chains=2, **kw)
    for field in ("losses", "observed", "final_w"):
        joint = getattr(both, field)
        np.testing.assert_allclose(joint[:2], getattr(one, field), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(joint[2:], getattr(two, field), rtol=1e-4, atol=1e-6)
    # shared w* gives a [T] centre trace; per-chain centres a [C, T] one, row = its problem's trace
    assert one.center_losses.shape == (10,) and both.center_losses.shape == (4, 10)
    np.testing.assert_allclose(both.center_losses[3], two.center_losses, rtol=1e-5)


def test_identical_chain_batches_equal_the_shared_batch():
    flat, loss_of, data = problem()
    get = lambda t: data[16 * (t % 8):16 * (t % 8 + 1)]
    shared = run_chains(loss_of, flat, S, chains=2, steps=6, get_batch=get, seed=0)
    stacked = run_chains(loss_of, flat, S, chains=2, steps=6, seed=0, per_chain_batches=True,
                         get_batch=lambda t: stack_batches([get(t), get(t)]))
    np.testing.assert_allclose(shared.losses, stacked.losses, rtol=1e-5)


def test_chain_stacking_round_trips_a_task_batch():
    _, _, data = problem()
    st = stack_batches([data[:4], data[4:8]])
    assert st.tokens.shape == (2, 4, data.tokens.shape[1])
    assert torch.equal(chain_batch(st, 1).tokens, data[4:8].tokens)
    assert set(chain_batch(st, 0).features) == set(data.features)


def test_bad_options_are_named():
    flat, loss_of, data = problem()
    kw = dict(chains=2, steps=2, get_batch=lambda t: data[:8], seed=0)
    with pytest.raises(SamplerError, match="centers"):
        run_chains(loss_of, flat, S, centers=torch.zeros(3, flat.w_star.numel()), **kw)
    with pytest.raises(SamplerError, match="observe_batch"):
        run_chains(loss_of, flat, S, observe_every=2, **kw)
    with pytest.raises(SamplerError, match="leading chain dimension"):
        run_chains(loss_of, flat, S, per_chain_batches=True, **kw)


def test_batches_of_varying_shape_fall_back_to_direct_fetching():
    flat, loss_of, data = problem()
    sizes = [16, 16, 8, 24, 16, 12]
    get = lambda t: data[:sizes[t]]
    a = run_chains(loss_of, flat, S, chains=2, steps=6, get_batch=get, seed=0)
    b = run_chains(loss_of, flat, S, chains=2, steps=6, get_batch=get, seed=0, vectorized=False)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_captured_step_equals_eager_step_on_cuda():
    _, _, data = problem()
    dev = torch.device("cuda")
    task = get_task("addition", n_bits=3)
    torch.manual_seed(0)
    m = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, vocab_size=5, n_ctx=task.seq_len)).to(dev)
    f = FlatParams(m, {k: None for k, _ in m.named_parameters()})
    lo = make_flat_loss(m, lambda mm, b: task.loss(mm(b.tokens), b), f)
    d = data.to(dev)
    get = lambda t: d[16 * (t % 8):16 * (t % 8 + 1)]
    kw = dict(chains=4, steps=40, get_batch=get, seed=0, center_loss=True, observe_batch=d[:32],
              observe_every=7, mala=True, draw_steps=range(30, 40, 3))
    a = run_chains(lo, f, S, capture=True, **kw)
    b = run_chains(lo, f, S, capture=False, **kw)
    assert a.captured and not b.captured
    for x, y in ((a.losses, b.losses), (a.center_losses, b.center_losses), (a.observed, b.observed),
                 (a.final_w, b.final_w), (a.mala_accept, b.mala_accept)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_off_cuda_the_step_runs_eager_and_capture_true_is_refused():
    """The capture fallback: where no CUDA graph can be taken (here, a CPU) the default runs the
    eager step, the same numbers as asking for it; capture=True says why it cannot."""
    flat, loss_of, data = problem()
    kw = dict(chains=3, steps=12, get_batch=lambda t: data[16 * (t % 8):16 * (t % 8 + 1)], seed=0,
              center_loss=True, observe_batch=data[:32], observe_every=5)
    a = run_chains(loss_of, flat, S, **kw)
    b = run_chains(loss_of, flat, S, capture=False, **kw)
    assert not a.captured and not b.captured
    for x, y in ((a.losses, b.losses), (a.center_losses, b.center_losses), (a.observed, b.observed),
                 (a.final_w, b.final_w)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    with pytest.raises(SamplerError, match="capture=True needs a CUDA device"):
        run_chains(loss_of, flat, S, capture=True, **kw)
