"""Pure PPO helpers against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from agents.ppo_utils import (
    AdaptiveKLController,
    FixedKLController,
    compute_gae,
    explained_variance,
    kl_estimate,
    kl_per_response,
    leave_one_out_advantages,
    masked_mean,
    masked_var,
    masked_whiten,
)

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # unmasked values 1, 2, 4


def test_masked_mean_and_var():
    assert masked_mean(X, MASK).item() == pytest.approx(7 / 3)
    assert masked_mean(X, MASK, dim=1).tolist() == pytest.approx([1.5, 4.0])
    # deviations from 7/3: -4/3, -1/3, 5/3 -> squares sum to 42/9
    assert masked_var(X, MASK, unbiased=False).item() == pytest.approx(14 / 9)
    assert masked_var(X, MASK).item() == pytest.approx(7 / 3)


def test_masked_whiten():
    std = math.sqrt(7 / 3)
    expected = torch.tensor([[(1 - 7 / 3) / std, (2 - 7 / 3) / std, 0.0], [(4 - 7 / 3) / std, 0.0, 0.0]])
    assert torch.allclose(masked_whiten(X, MASK), expected, atol=1e-6)
    kept_mean = masked_whiten(X, MASK, shift_mean=False)
    assert torch.allclose(kept_mean, (expected + 7 / 3) * MASK, atol=1e-6)


def test_kl_estimators():
    logp, logp_ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # log r = log(p_ref / p) = log 0.5
    assert kl_estimate(logp, logp_ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_estimate(logp, logp_ref, "k2").item() == pytest.approx(0.5 * math.log(0.5) ** 2)
    assert kl_estimate(logp, logp_ref, "k3").item() == pytest.approx(-0.5 + math.log(2))
    assert kl_estimate(logp_ref, logp_ref, "k3").item() == 0.0
    with pytest.raises(ValueError, match="k1"):
        kl_estimate(logp, logp_ref, "k4")


def test_kl_per_response_sums_the_estimate_over_response_tokens():
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.9], [0.5, 0.2, 0.2]]))
    logp_ref = torch.log(torch.tensor([[0.25, 0.5, 0.1], [0.25, 0.1, 0.1]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    for kind in ("k1", "k3"):
        expected = [float(kl_estimate(logp[i, :n], logp_ref[i, :n], kind).sum()) for i, n in enumerate((2, 1))]
        assert kl_per_response(logp, logp_ref, mask, kind).tolist() == pytest.approx(expected)
    assert kl_per_response(logp, logp_ref, mask).tolist() == pytest.approx([math.log(2), math.log(2)])


def test_compute_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 7.0, 7.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv, ret = compute_gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0 deltas: t2 = 1 - 0.3 = 0.7; t1 = 0.9*0.3 - 0.2 = 0.07; t0 = 0.9*0.2 - 0.1 = 0.08
    # A2 = 0.7; A1 = 0.07 + 0.45*0.7 = 0.385; A0 = 0.08 + 0.45*0.385 = 0.25325
    # row 1: one token, nothing bootstrapped past it: A0 = 0.5 - 0.4; padding ignored
    assert adv.tolist() == [pytest.approx([0.25325, 0.385, 0.7]), pytest.approx([0.1, 0.0, 0.0])]
    assert ret.tolist() == [pytest.approx([0.35325, 0.585, 1.0]), pytest.approx([0.5, 0.0, 0.0])]


def test_explained_variance():
    target = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones_like(target)
    assert explained_variance(target, target, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(target, 2.5), target, mask) == pytest.approx(0.0)


def test_leave_one_out_advantages():
    rewards = torch.tensor([[1.0, 2.0, 6.0]])
    # baselines: (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5
    assert leave_one_out_advantages(rewards).tolist() == [[-3.0, -1.5, 4.5]]
    with pytest.raises(ValueError, match="k >= 2"):
        leave_one_out_advantages(torch.ones(3, 1))


def test_adaptive_kl_controller_by_hand():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(12.0, n_episodes=10)  # error clipped to +0.2: 0.1 * (1 + 0.2 * 10/100)
    assert ctl.value == pytest.approx(0.102)
    ctl.update(3.0, n_episodes=10)  # error clipped to -0.2
    assert ctl.value == pytest.approx(0.102 * 0.98)
    ctl.update(6.6, n_episodes=50)  # error 0.1 within the clip
    assert ctl.value == pytest.approx(0.102 * 0.98 * 1.05)
    other = AdaptiveKLController(1.0, 6.0, 100)
    other.load_state_dict(ctl.state_dict())
    assert other.value == ctl.value


def test_fixed_kl_controller():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 64)
    assert ctl.value == 0.05
