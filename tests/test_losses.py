"""Hand-worked values for every objective in alignbench.losses (arithmetic in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from alignbench.losses.dpo import dpo_loss
from alignbench.losses.ipo import ipo_loss
from alignbench.losses.kto import kto_loss, mismatched_indices
from alignbench.losses.ppo import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae_advantages,
    kl_penalty_rewards,
    whiten,
)
from alignbench.losses.simpo import resolve_simpo_gamma, simpo_loss


def t(*xs, grad: bool = False) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64, requires_grad=grad)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x); the DPO loss is softplus(-beta*h)."""
    return math.log1p(math.exp(x))


# ----------------------------------------------------------------------------- DPO


def test_dpo_hand_values():
    # example 0: r_w = -10 - (-11) = 1, r_l = -12 - (-11) = -1, h = 2, beta*h = 0.2
    #            L = -log sigmoid(0.2) = log(1 + e^-0.2) = 0.598139
    # example 1: policy == reference -> h = 0 -> L = log 2
    pc, pr = t(-10.0, -5.0, grad=True), t(-12.0, -7.0)
    rc, rr = t(-11.0, -5.0), t(-11.0, -7.0)
    out = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert out.losses.shape == (2,)
    assert out.losses[0].item() == pytest.approx(math.log(1 + math.exp(-0.2)), abs=1e-12)
    assert out.losses[1].item() == pytest.approx(math.log(2), abs=1e-12)
    # rewards = beta * (policy - ref): 0.1 * 1, 0.1 * -1; 0 and 0
    torch.testing.assert_close(out.chosen_rewards, t(0.1, 0.0))
    torch.testing.assert_close(out.rejected_rewards, t(-0.1, 0.0))
    assert out.losses.requires_grad and not out.chosen_rewards.requires_grad
    # dL/d logp_w = -beta * sigmoid(-beta h) = -0.1 * sigmoid(-0.2) for example 0
    out.losses.sum().backward()
    assert pc.grad[0].item() == pytest.approx(-0.1 / (1 + math.exp(0.2)), abs=1e-12)


def test_dpo_label_smoothing_hand_value():
    # cDPO, eps = 0.1, beta*h = 0.2:
    # L = 0.9 * log(1 + e^-0.2) + 0.1 * log(1 + e^0.2)
    out = dpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1, label_smoothing=0.1)
    expected = 0.9 * softplus(-0.2) + 0.1 * softplus(0.2)
    assert out.losses.item() == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError):
        dpo_loss(t(0.0), t(0.0), t(0.0), t(0.0), beta=0.1, label_smoothing=0.5)


# ----------------------------------------------------------------------------- IPO


def test_ipo_mean_vs_sum_hand_values():
    # r_w = -6 - (-8) = 2 over |y_w| = 2 tokens; r_l = -9 - (-8) = -1 over |y_l| = 4 tokens
    # tau = 0.5 -> target 1 / (2 tau) = 1
    # length-normalised (TRL): h = 2/2 - (-1/4) = 1.25 -> L = 0.25^2 = 0.0625
    # summed (paper):          h = 2 - (-1) = 3     -> L = 2^2 = 4
    args = (t(-6.0), t(-9.0), t(-8.0), t(-8.0))
    lengths = dict(chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([4]))
    mean = ipo_loss(*args, tau=0.5, **lengths, length_normalize=True)
    summed = ipo_loss(*args, tau=0.5, **lengths, length_normalize=False)
    assert mean.losses.item() == pytest.approx(0.0625, abs=1e-12)
    assert summed.losses.item() == pytest.approx(4.0, abs=1e-12)
    # rewards are tau * summed log-ratio in both conventions (TRL 1.16): 0.5*2, 0.5*-1
    for out in (mean, summed):
        assert out.chosen_rewards.item() == pytest.approx(1.0)
        assert out.rejected_rewards.item() == pytest.approx(-0.5)
    # summed form does not need lengths; the normalised one does
    assert ipo_loss(*args, tau=0.5, length_normalize=False).losses.item() == pytest.approx(4.0)
    with pytest.raises(ValueError):
        ipo_loss(*args, tau=0.5, length_normalize=True)


def test_ipo_equal_lengths_one_token_conventions_agree():
    # with |y| = 1 for every response, mean == sum
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(4)]
    ones = torch.ones(5, dtype=torch.long)
    a = ipo_loss(*x, tau=0.1, chosen_lengths=ones, rejected_lengths=ones, length_normalize=True)
    b = ipo_loss(*x, tau=0.1, length_normalize=False)
    torch.testing.assert_close(a.losses, b.losses)
    assert a.losses.shape == (5,)


# ----------------------------------------------------------------------------- KTO


def test_kto_hand_values():
    # r = policy - ref = [-3 - -4, -5 - -4] = [1, -1]; beta = 0.5
    # KL pairs: policy - ref = [-6 - -6.5, -7 - -7.1] = [0.5, 0.1] -> z0 = max(0, 0.3) = 0.3
    # desirable (lambda_D = 2):   2   * (1 - sigmoid(0.5 * (1 - 0.3)))  = 2 * (1 - sigmoid(0.35))
    # undesirable (lambda_U = .5): 0.5 * (1 - sigmoid(0.5 * (0.3 + 1))) = 0.5 * (1 - sigmoid(0.65))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    pkl = t(-6.0, -7.0, grad=True)
    out = kto_loss(
        t(-3.0, -5.0, grad=True), t(-4.0, -4.0), torch.tensor([True, False]),
        pkl, t(-6.5, -7.1), beta=0.5, desirable_weight=2.0, undesirable_weight=0.5,
    )
    assert out.losses.shape == (2,)
    assert out.losses[0].item() == pytest.approx(2 * (1 - sig(0.35)), abs=1e-12)
    assert out.losses[1].item() == pytest.approx(0.5 * (1 - sig(0.65)), abs=1e-12)
    assert out.kl.item() == pytest.approx(0.3, abs=1e-12)
    torch.testing.assert_close(out.rewards, t(0.5, -0.5))
    assert not out.kl.requires_grad and not out.rewards.requires_grad  # z0 is detached
    assert out.losses.requires_grad


def test_kto_negative_kl_estimate_is_clamped_to_zero():
    # mean(policy_kl - ref_kl) = mean(-1, -2) = -1.5 -> z0 = 0 -> L = 1 - sigmoid(0.1 * 2)
    out = kto_loss(t(0.0), t(-2.0), torch.tensor([True]), t(-3.0, -4.0), t(-2.0, -2.0), beta=0.1)
    assert out.kl.item() == 0.0
    assert out.losses.item() == pytest.approx(1 - 1 / (1 + math.exp(-0.2)), abs=1e-12)


def test_kto_batch_of_one_is_finite():
    idx = mismatched_indices(1)
    assert idx.numel() == 0 and idx.dtype == torch.long
    policy, ref = t(-3.0, grad=True), t(-4.0)
    # the caller gathers mismatched pairs with the empty index: empty KL tensors -> z0 = 0
    out = kto_loss(policy, ref, torch.tensor([False]), policy[idx], ref[idx], beta=0.1)
    assert torch.isfinite(out.losses).all() and out.kl.item() == 0.0
    # r = 1, z0 = 0, undesirable: 1 - sigmoid(0.1 * (0 - 1))
    assert out.losses.item() == pytest.approx(1 - 1 / (1 + math.exp(0.1)), abs=1e-12)
    out.losses.sum().backward()
    assert torch.isfinite(policy.grad).all()
    # None works too
    assert kto_loss(policy, ref, torch.tensor([True]), None, None, beta=0.1).kl.item() == 0.0


def test_mismatched_indices_rotate_by_one():
    # TRL pairs (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1}): j = i - 1 mod n
    assert mismatched_indices(4).tolist() == [3, 0, 1, 2]
    assert mismatched_indices(2).tolist() == [1, 0]
    for n in range(2, 9):
        idx = mismatched_indices(n)
        assert (idx != torch.arange(n)).all() and sorted(idx.tolist()) == list(range(n))


def test_mismatched_indices_skip_the_interleaved_partner():
    # the unpaired view interleaves (x_1, chosen), (x_1, rejected), (x_2, chosen), ...: j = i + 2
    assert mismatched_indices(6, offset=-2).tolist() == [2, 3, 4, 5, 0, 1]
    prompts = [i // 2 for i in range(6)]
    assert all(prompts[j] != prompts[i] for i, j in enumerate(mismatched_indices(6, offset=-2).tolist()))
    assert mismatched_indices(2, offset=-2).numel() == 0  # one prompt's two completions: no mismatched pair


# ----------------------------------------------------------------------------- SimPO


def test_simpo_hand_values():
    # beta = 2, gamma/beta = 0.5 -> gamma = 1 ('ratio') or 0.5 ('absolute')
    # avg logp: chosen -4 / 4 = -1, rejected -9 / 3 = -3
    # rewards: 2 * -1 = -2, 2 * -3 = -6; margin 4
    # 'ratio':    L = -log sigmoid(4 - 1)   = log(1 + e^-3)
    # 'absolute': L = -log sigmoid(4 - 0.5) = log(1 + e^-3.5)
    assert resolve_simpo_gamma(2.0, 0.5, "ratio") == 1.0
    assert resolve_simpo_gamma(2.0, 0.5, "absolute") == 0.5
    with pytest.raises(ValueError):
        resolve_simpo_gamma(2.0, 0.5, "relative")
    args = (t(-4.0, grad=True), t(-9.0), torch.tensor([4]), torch.tensor([3]))
    out = simpo_loss(*args, beta=2.0, gamma=resolve_simpo_gamma(2.0, 0.5, "ratio"))
    assert out.losses.item() == pytest.approx(math.log(1 + math.exp(-3.0)), abs=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(-2.0)
    assert out.rejected_rewards.item() == pytest.approx(-6.0)
    assert not out.chosen_rewards.requires_grad and out.losses.requires_grad
    out = simpo_loss(*args, beta=2.0, gamma=resolve_simpo_gamma(2.0, 0.5, "absolute"))
    assert out.losses.item() == pytest.approx(math.log(1 + math.exp(-3.5)), abs=1e-12)


# ----------------------------------------------------------------------------- PPO


def test_whiten_hand_values():
    # valid x = [2, 4, 6]: mean 4, unbiased var ((-2)^2 + 0 + 2^2) / 2 = 4, std 2
    x = t(2.0, 4.0, 6.0, 100.0)
    mask = torch.tensor([1, 1, 1, 0])
    torch.testing.assert_close(whiten(x, mask), t(-1.0, 0.0, 1.0, 0.0))
    # shift_mean=False keeps the mean: [-1, 0, 1] + 4
    torch.testing.assert_close(whiten(x, mask, shift_mean=False), t(3.0, 4.0, 5.0, 0.0))
    # no mask: [1, 2, 3, 4] -> mean 2.5, var 5/3
    y = whiten(t(1.0, 2.0, 3.0, 4.0))
    torch.testing.assert_close(y, (t(1.0, 2.0, 3.0, 4.0) - 2.5) / math.sqrt(5 / 3))


def test_kl_penalty_puts_score_on_last_valid_token():
    # kl_coef = 0.1
    # row 0 (3 tokens): kl = [-1 - -1.5, -2 - -2, -3 - -2] = [0.5, 0, -1]
    #   rewards = [-0.05, 0, 0.1 + score 2] = [-0.05, 0, 2.1]
    # row 1 (2 tokens + pad): kl = [1, 0, pad 0]; rewards = [-0.1, 0 + score -1, 0]
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -5.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, -0.5]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = kl_penalty_rewards(logprobs, ref, t(2.0, -1.0), mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, -1.0], [1.0, 0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(
        rewards, torch.tensor([[-0.05, 0.0, 2.1], [-0.1, -1.0, 0.0]], dtype=torch.float64)
    )
    with pytest.raises(ValueError):  # a row without any response token cannot carry a score
        kl_penalty_rewards(logprobs, ref, t(2.0, -1.0), torch.tensor([[1, 1, 1], [0, 0, 0]]), 0.1)


def test_gae_three_tokens_hand_values():
    # gamma = 1, lam = 0.95; row 0: r = [0, 0, 1], V = [0.5, 0.2, 0.4], 3 valid tokens
    #   d2 = 1 - 0.4 = 0.6                    A2 = 0.6
    #   d1 = 0 + 0.4 - 0.2 = 0.2              A1 = 0.2 + 0.95 * 0.6 = 0.77
    #   d0 = 0 + 0.2 - 0.5 = -0.3             A0 = -0.3 + 0.95 * 0.77 = 0.4315
    #   returns = A + V = [0.9315, 0.97, 1.0]
    # row 1: 2 valid tokens, garbage in the pad slot must not leak in
    #   r = [0, 1], V = [0.5, 0.2]: A1 = 1 - 0.2 = 0.8 (no bootstrap after the last token)
    #   A0 = 0 + 0.2 - 0.5 + 0.95 * 0.8 = 0.46; returns [0.96, 1.0]
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 99.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.2, 0.4], [0.5, 0.2, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(adv, torch.tensor([[0.4315, 0.77, 0.6], [0.46, 0.8, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(ret, torch.tensor([[0.9315, 0.97, 1.0], [0.96, 1.0, 0.0]], dtype=torch.float64))
    # lam = 1, gamma = 1: A_t = (sum of rewards from t) - V_t (Monte Carlo): [1-0.5, 1-0.2, 1-0.4]
    adv, _ = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv[0], t(0.5, 0.8, 0.6))


def test_clipped_policy_loss_hand_values_and_zero_gradient_when_clipped():
    # eps = 0.2, old logp = 0, so ratio = exp(logp)
    # tok0: ratio 1.5, A = +1: max(-1.5, -1.2) = -1.2  clipped term active -> grad 0, counted
    # tok1: ratio 0.5, A = +1: max(-0.5, -0.8) = -0.5  unclipped -> d/dlogp(-A r) = -0.5
    # tok2: ratio 1.0, A = -2: max(2, 2) = 2            tie, not counted -> grad = -A r = 2
    # tok3: ratio 1.5, A = -1: max(1.5, 1.2) = 1.5      unclipped -> grad = 1.5
    # tok4: padding
    # loss = (-1.2 - 0.5 + 2 + 1.5) / 4 = 0.45; clipfrac = 1/4; grads / 4
    logp = torch.tensor([[math.log(1.5), math.log(0.5), 0.0, math.log(1.5), 3.0]],
                        dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 5, dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, -2.0, -1.0, 50.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, clipfrac, approx_kl = clipped_policy_loss(logp, old, adv, mask, clip_ratio=0.2)
    assert loss.item() == pytest.approx(0.45, abs=1e-12)
    assert clipfrac.item() == pytest.approx(0.25)
    # approx_kl = mean((r - 1) - log r): (0.5 - log 1.5) + (-0.5 - log 0.5) + 0 + (0.5 - log 1.5), / 4
    expected_kl = ((0.5 - math.log(1.5)) * 2 + (-0.5 - math.log(0.5))) / 4
    assert approx_kl.item() == pytest.approx(expected_kl, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.5 / 4, 2 / 4, 1.5 / 4, 0.0]], dtype=torch.float64))


def test_clipped_value_loss_hand_values():
    # c = 0.2, old V = 0
    # tok0: V = 0.5 -> V_clip = 0.2, R = 1: (0.5-1)^2 = 0.25 vs (0.2-1)^2 = 0.64 -> 0.64 (clipped, counted)
    # tok1: V = -0.1 inside the clip, R = 1: 1.21 vs 1.21 -> 1.21 (tie, not counted)
    # tok2: V = 0.3 -> V_clip = 0.2, R = -1: 1.69 vs 1.44 -> 1.69 (unclipped)
    # loss = 0.5 * (0.64 + 1.21 + 1.69) / 3 = 0.59; vf_clipfrac = 1/3
    values = torch.tensor([[0.5, -0.1, 0.3, 9.0]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 4, dtype=torch.float64)
    returns = torch.tensor([[1.0, 1.0, -1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, vf_clipfrac = clipped_value_loss(values, old, returns, mask, value_clip=0.2)
    assert loss.item() == pytest.approx(0.59, abs=1e-12)
    assert vf_clipfrac.item() == pytest.approx(1 / 3)
    loss.backward()
    # tok0 clipped -> grad 0; tok1: 0.5 * 2 (V - R) / 3 = -1.1 / 3; tok2: 1.3 / 3
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, -1.1 / 3, 1.3 / 3, 0.0]], dtype=torch.float64))


def test_entropy_from_logits_hand_values():
    # tok0: uniform over 4 -> log 4; tok1: uniform over 2 (two logits ~ -inf) -> log 2; tok2 pad
    # masked mean = (log 4 + log 2) / 2 = 1.5 log 2
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, -1e9, -1e9], [5.0, 0.0, 0.0, 0.0]]])
    ent = entropy_from_logits(logits, torch.tensor([[1, 1, 0]]))
    assert ent.item() == pytest.approx(1.5 * math.log(2), abs=1e-6)


def test_adaptive_kl_controller_hand_values():
    # Ziegler et al. 2019: e = clip(KL / target - 1, -0.2, 0.2); coef *= 1 + e * n_steps / horizon
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    # KL 9 -> e = 0.5, clipped to 0.2 -> 0.1 * (1 + 0.2 * 256 / 10000) = 0.1 * 1.00512
    assert ctl.update(9.0, n_steps=256) == pytest.approx(0.100512, abs=1e-12)
    # KL 5.4 -> e = -0.1 -> * (1 - 0.1 * 1000 / 10000) = * 0.99
    assert ctl.update(5.4, n_steps=1000) == pytest.approx(0.100512 * 0.99, abs=1e-12)
    assert ctl.value == pytest.approx(0.100512 * 0.99, abs=1e-12)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("B", [1, 7])
def test_paired_losses_shapes(B):
    g = torch.Generator().manual_seed(B)
    pc, pr, rc, rr = (-torch.rand(B, generator=g) * 20 for _ in range(4))
    lc, lr = torch.randint(1, 9, (B,), generator=g), torch.randint(1, 9, (B,), generator=g)
    outs = [
        dpo_loss(pc, pr, rc, rr, beta=0.1),
        ipo_loss(pc, pr, rc, rr, tau=0.1, chosen_lengths=lc, rejected_lengths=lr),
        simpo_loss(pc, pr, lc, lr, beta=2.5, gamma=1.25),
    ]
    for out in outs:
        for x in (out.losses, out.chosen_rewards, out.rejected_rewards):
            assert x.shape == (B,) and torch.isfinite(x).all()
    idx = mismatched_indices(B)
    kto = kto_loss(pc, rc, torch.rand(B, generator=g) > 0.5, pr[idx], rr[idx], beta=0.1)
    assert kto.losses.shape == (B,) and kto.rewards.shape == (B,) and kto.kl.shape == ()


# --------------------------------------------------------------------------- RLOO

def test_rloo_advantages_by_hand():
    from alignbench.losses.rloo import rloo_advantages

    r = torch.tensor([1.0, 2.0, 3.0, 6.0])
    # k=2: groups (1, 2), (3, 6); each baseline is the other sample's reward
    assert rloo_advantages(r, 2).tolist() == [-1.0, 1.0, -3.0, 3.0]
    # k=4: baseline_i = (12 - r_i) / 3 = 11/3, 10/3, 3, 2
    assert torch.allclose(rloo_advantages(r, 4), torch.tensor([-8 / 3, -4 / 3, 0.0, 4.0]))
    # A_i = k/(k-1) * (r_i - group mean): a group's advantages sum to zero
    assert rloo_advantages(r, 4).sum().abs() < 1e-6
    with pytest.raises(ValueError, match="k >= 2"):
        rloo_advantages(r, 1)
    with pytest.raises(ValueError, match="groups of k=3"):
        rloo_advantages(r, 3)
