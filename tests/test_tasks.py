import pytest
import torch
from hypothesis import given, settings, strategies as st

from llc_watch.tasks import TASKS, TaskConfigError, get_task


def bits_to_int(bits):
    return sum(int(b) << i for i, b in enumerate(bits))


@settings(max_examples=30, deadline=None)
@given(n_bits=st.integers(1, 64), seed=st.integers(0, 2**31))
def test_addition_matches_python_integers(n_bits, seed):
    task = get_task("addition", n_bits=n_bits)
    batch = task.sample(8, seed)
    n = n_bits
    full = torch.cat([batch.tokens, batch.targets[:, -1:]], dim=1)
    for row in full.tolist():
        a, b = bits_to_int(row[:n]), bits_to_int(row[n + 1:2 * n + 1])
        assert row[n] == 2 and row[2 * n + 1] == 3 and row[-1] == 4
        assert bits_to_int(row[2 * n + 2:3 * n + 3]) == a + b


@settings(max_examples=30, deadline=None)
@given(n_bits=st.integers(1, 12), seed=st.integers(0, 2**31))
def test_multiplication_matches_python_integers(n_bits, seed):
    task = get_task("multiplication", n_bits=n_bits)
    batch = task.sample(8, seed)
    n = n_bits
    full = torch.cat([batch.tokens, batch.targets[:, -1:]], dim=1)
    for row in full.tolist():
        a, b = bits_to_int(row[:n]), bits_to_int(row[n + 1:2 * n + 1])
        assert bits_to_int(row[2 * n + 2:4 * n + 2]) == a * b


@settings(max_examples=20, deadline=None)
@given(n_bits=st.integers(1, 16), seed=st.integers(0, 2**31))
def test_addition_carry_labels_match_independent_computation(n_bits, seed):
    task = get_task("addition", n_bits=n_bits)
    batch = task.sample(4, seed)
    n = n_bits
    for r in range(4):
        row = batch.tokens[r].tolist()
        a, b = bits_to_int(row[:n]), bits_to_int(row[n + 1:2 * n + 1])
        for i in range(n + 1):
            t = 2 * n + 1 + i  # the input position that predicts sum bit i
            assert batch.targets[r, t] == ((a + b) >> i) & 1
            mask = (1 << i) - 1
            carry_in = ((a & mask) + (b & mask)) >> i  # carry into bit i
            assert batch.features["carry_in"][r, t] == carry_in
            if i < n:
                assert batch.features["a_bit"][r, t] == (a >> i) & 1
                assert batch.features["carry_out"][r, t] == (((a & (2 * mask + 1)) + (b & (2 * mask + 1))) >> (i + 1))
        # undefined outside the answer
        assert torch.isnan(batch.features["carry_in"][r, : 2 * n + 1]).all()


@settings(max_examples=20, deadline=None)
@given(n_bits=st.integers(2, 8), seed=st.integers(0, 2**31))
def test_multiplication_partial_product_carries(n_bits, seed):
    task = get_task("multiplication", n_bits=n_bits)
    batch = task.sample(4, seed)
    n = n_bits
    for r in range(4):
        row = batch.tokens[r].tolist()
        a, b = bits_to_int(row[:n]), bits_to_int(row[n + 1:2 * n + 1])
        for k in range(1, n):
            running = a * (b & ((1 << k) - 1))      # sum of partial products 0..k-1
            addend = (a * ((b >> k) & 1)) << k
            for i in range(2 * n):
                t = 2 * n + 1 + i
                mask = (1 << i) - 1
                carry = ((running & mask) + (addend & mask)) >> i
                assert batch.features[f"pp_carry_{k}"][r, t] == carry
        for i in range(2 * n):  # column carry: what long multiplication carries into column i
            t = 2 * n + 1 + i
            col_sums = sum(((a >> j) & 1) * ((b >> (c - j)) & 1) << c
                           for c in range(i) for j in range(max(0, c - n + 1), min(c, n - 1) + 1))
            assert batch.features["column_carry"][r, t] == col_sums >> i


def test_modular_addition_split_is_fixed_and_disjoint():
    task = get_task("modular_addition", p=13)
    train = task.split("train", 0, seed=3, train_fraction=0.3)
    test = task.split("test", 0, seed=3, train_fraction=0.3)
    assert len(train) == round(0.3 * 169) and len(train) + len(test) == 169
    pairs = lambda b: {tuple(x) for x in b.tokens[:, :2].tolist()}
    assert not pairs(train) & pairs(test)
    assert torch.equal(train.tokens, task.split("train", 0, seed=3, train_fraction=0.3).tokens)
    assert ((train.tokens[:, 0] + train.tokens[:, 1]) % 13 == train.targets[:, -1]).all()
    assert train.loss_mask.sum(1).eq(1).all()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_is_deterministic_and_masked(name):
    task = TASKS[name]()
    a, b = task.sample(16, seed=7), task.sample(16, seed=7)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.tokens, task.sample(16, seed=8).tokens)
    assert a.loss_mask.any(1).all()
    for feat, values in a.features.items():
        assert values.shape == a.loss_mask.shape, feat
        assert (~torch.isnan(values)).any(), f"{feat} is never defined"
        assert feat in task.features


@pytest.mark.parametrize("name,settings,word", [
    ("addition", {"n_bits": 0}, "n_bits"),
    ("addition", {"n_bits": 65}, "n_bits"),
    ("multiplication", {"n_bits": -1}, "n_bits"),
    ("modular_addition", {"p": 12}, "p=12"),
    ("modular_addition", {"p": 1}, "prime"),
    ("addition", {"bits": 4}, "bits"),
    ("nope", {}, "unknown task"),
])
def test_impossible_settings_are_rejected_by_name(name, settings, word):
    with pytest.raises(TaskConfigError, match=word):
        get_task(name, **settings)


def test_train_fraction_outside_unit_interval_is_rejected():
    from llc_watch.config import ConfigError, RunConfig
    for bad in ("0", "1.5", "-0.2"):
        with pytest.raises(ConfigError, match="train_fraction"):
            RunConfig.from_preset("modular-addition").with_overrides([f"train.train_fraction={bad}"])
