import pytest
import torch
from torch.func import functional_call, grad, vmap

from llc_watch.model import ModelConfig, ModelConfigError, Transformer


def make(**kw):
    cfg = dict(n_layers=2, d_model=32, n_heads=4, d_mlp=64, vocab_size=7, n_ctx=12)
    cfg.update(kw)
    torch.manual_seed(0)
    return Transformer(ModelConfig(**cfg))


@pytest.mark.parametrize("pos", ["learned", "rotary"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "none"])
def test_sites_have_expected_shapes(pos, norm):
    model = make(pos=pos, norm=norm)
    tokens = torch.randint(0, 7, (3, 10))
    out, cache = model.run_with_cache(tokens)
    assert out.shape == (3, 10, 7)
    assert list(cache) == model.site_names
    for l in range(2):
        p = f"blocks.{l}"
        for s in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            assert cache[f"{p}.{s}"].shape == (3, 10, 32)
        assert cache[f"{p}.mlp.hook_post"].shape == (3, 10, 64)
        assert cache[f"{p}.attn.hook_pattern"].shape == (3, 4, 10, 10)
        assert cache[f"{p}.attn.hook_z"].shape == (3, 10, 4, 8)
    # residual bookkeeping: post = mid + mlp_out = pre + attn_out + mlp_out
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"],
                               cache["blocks.0.hook_resid_pre"] + cache["blocks.0.hook_attn_out"]
                               + cache["blocks.0.hook_mlp_out"])


def test_causal():
    model = make()
    a = torch.randint(0, 7, (2, 10))
    b = a.clone()
    b[:, 6:] = (b[:, 6:] + 1) % 7
    torch.testing.assert_close(model(a)[:, :6], model(b)[:, :6])


def test_edit_at_a_site_changes_the_output_and_only_downstream():
    model = make()
    tokens = torch.randint(0, 7, (2, 10))
    base, cache = model.run_with_cache(tokens)

    def shift_last_position(x):
        x = x.clone()
        x[:, -1] += 5.0
        return x

    edited, ecache = model.run_with_cache(tokens, hooks={"blocks.1.hook_resid_pre": shift_last_position})
    assert not torch.allclose(edited[:, -1], base[:, -1])
    torch.testing.assert_close(edited[:, :-1], base[:, :-1])  # earlier positions cannot see it
    torch.testing.assert_close(ecache["blocks.0.hook_resid_post"], cache["blocks.0.hook_resid_post"])
    # a hook that returns None only reads
    seen = {}
    def read_only(x):
        seen["x"] = x

    torch.testing.assert_close(model(tokens, hooks={"blocks.0.hook_mlp_out": read_only}), base)
    torch.testing.assert_close(seen["x"], cache["blocks.0.hook_mlp_out"])


def test_unknown_site_is_named():
    with pytest.raises(KeyError, match="blocks.9.hook_resid_post"):
        make()(torch.zeros(1, 3, dtype=torch.long), hooks={"blocks.9.hook_resid_post": lambda x: x})


def test_works_under_functional_call_and_vmap():
    model = make()
    tokens = torch.randint(0, 7, (4, 10))
    params = {k: v.detach() for k, v in model.named_parameters()}
    chains = {k: torch.stack([v, v + 0.01 * torch.randn_like(v)]) for k, v in params.items()}
    loss = lambda p: functional_call(model, p, (tokens,)).logsumexp(-1).mean()
    grads = vmap(grad(loss))(chains)
    g0 = grad(loss)(params)
    for k in params:
        torch.testing.assert_close(grads[k][0], g0[k], rtol=1e-4, atol=1e-6)
        assert not torch.allclose(grads[k][0], grads[k][1]) or g0[k].abs().max() == 0


def test_continuous_input_and_output():
    model = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=0, d_in=5, d_out=1, n_ctx=8))
    assert model(torch.randn(3, 8, 5)).shape == (3, 8, 1)


@pytest.mark.parametrize("kw,word", [({"d_model": 30}, "n_heads"), ({"act": "tanh"}, "act"),
                                     ({"norm": "batch"}, "norm"), ({"n_layers": 0}, "n_layers"),
                                     ({"pos": "rotary", "d_model": 12, "n_heads": 4}, "rotary")])
def test_bad_model_configs_are_named(kw, word):
    with pytest.raises(ModelConfigError, match=word):
        make(**kw)
