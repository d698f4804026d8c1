"""PPO for RLHF, the pieces as pure tensor functions (cleanrl / TRL style).

References: PPO, Schulman et al. 2017 (clipped surrogate, eq. 7); GAE, Schulman et al. 2016
(eq. 16); RLHF with a per-token KL penalty and adaptive KL coefficient, Ziegler et al. 2019
(eq. 2 and section 2.2); Ouyang et al. 2022 (InstructGPT, eq. 2). Implementation details
follow "The 37 implementation details of PPO" (Huang et al. 2022, cleanrl) and "The N
implementation details of RLHF with PPO" (Huang et al. 2023, TRL).

Shapes: [B, T] per-token tensors over the *response* tokens, right-padded; `mask` is 1 on
real response tokens and 0 on padding. Every mean over tokens is a masked mean.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of `x` over positions where `mask` is 1 (all positions when mask is None).
    An all-zero mask gives 0 rather than NaN."""
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whitening_stats(x: Tensor, mask: Tensor | None = None, total=None) -> tuple[Tensor, Tensor]:
    """The mean and unbiased (Bessel-corrected) variance of `x` over the valid positions that `whiten`
    uses. `total(sums)` adds up per-batch sums over a larger batch (under DDP: every process's
    rollout, `training.distributed.sum_tensor_over_processes`), so each process normalises by the
    whole batch's statistics; None: this batch alone."""
    m = torch.ones_like(x) if mask is None else mask.to(x.dtype)
    total = total or (lambda sums: sums)
    weighted_sum, n = total(torch.stack([(x * m).sum(), m.sum()]))
    mean = weighted_sum / n.clamp(min=1)
    var = total((((x - mean) ** 2) * m).sum()) / (n - 1).clamp(min=1)
    return mean, var


def whiten(x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8,
           total=None) -> Tensor:
    """Normalise to unit variance (and zero mean when `shift_mean`) over the valid positions.

    Trick (cleanrl `norm_adv`, TRL `whiten_advantages`): advantages are whitened per batch so
    the policy step size does not depend on the reward scale. `shift_mean=False` only rescales
    (TRL's reward whitening keeps the mean, which carries the signal). The variance is the
    unbiased (Bessel-corrected) one, like `torch.std` in cleanrl and TRL's `masked_var`.
    Padding positions come back as 0. `total`: as `whitening_stats` (the batch is every process's).
    """
    m = torch.ones_like(x) if mask is None else mask.to(x.dtype)
    mean, var = whitening_stats(x, mask, total)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def _last_valid_index(mask: Tensor) -> Tensor:
    """[B] index of the last 1 in each row of `mask`; raises if a row has none."""
    valid = mask.to(torch.bool)
    if not bool(valid.any(dim=1).all()):
        raise ValueError("every row needs at least one valid response token to carry the score")
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    return torch.where(valid, positions, -1).max(dim=1).values


def kl_penalty_rewards(
    logprobs: Tensor, ref_logprobs: Tensor, scores: Tensor, mask: Tensor, kl_coef: float
) -> tuple[Tensor, Tensor]:
    """Per-token RLHF rewards (Ziegler et al. 2019 eq. 2; Ouyang et al. 2022 eq. 2).

    kl_t = log pi_theta(y_t) - log pi_ref(y_t)   (the "k1" per-token estimator; summed over t
    it is an unbiased estimate of the sequence KL for samples from pi_theta)
    reward_t = -kl_coef * kl_t, plus the sequence score (reward model or gold) added at the
    last valid token of each row. Rollout quantities: the outputs are detached.

    Returns (rewards [B, T], kl [B, T]), both 0 on padding.
    """
    m = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs).detach() * m
    rewards = -kl_coef * kl
    last = _last_valid_index(mask)
    rows = torch.arange(rewards.size(0), device=rewards.device)
    rewards[rows, last] += scores.detach().to(rewards.dtype)
    return rewards, kl


def gae_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16), backwards in time.

    delta_t = r_t + gamma * V_{t+1} - V_t;   A_t = delta_t + gamma * lam * A_{t+1}
    with V and A after the last valid token taken as 0 (the episode ends at EOS: no bootstrap).
    Returns (advantages, returns = advantages + values), both [B, T], detached, 0 on padding.
    The returns are the value-function targets (TD(lambda) returns).
    """
    m = mask.to(rewards.dtype)
    rewards, values = rewards.detach() * m, values.detach() * m
    T = rewards.size(1)
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_mask = m[:, t + 1] if t + 1 < T else torch.zeros_like(next_adv)
        next_value = values[:, t + 1] * next_mask if t + 1 < T else torch.zeros_like(next_adv)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = delta + gamma * lam * next_mask * next_adv
        advantages[:, t] = next_adv
    advantages = advantages * m
    return advantages, (advantages + values) * m


def clipped_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_ratio: float
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise.

    ratio = exp(logp - old_logp); loss = masked_mean(max(-A * ratio, -A * clip(ratio, 1-eps, 1+eps))).
    The max of the negated terms is the pessimistic bound: once the ratio has moved past
    1 +/- eps in the direction the advantage favours, the clipped term wins and the token's
    gradient is zero.

    Returns (loss scalar, clipfrac, approx_kl):
    - clipfrac: fraction of valid tokens where the clipped term is the active one (its
      gradient is cut), as TRL's `pg_clipfrac`;
    - approx_kl: masked mean of (ratio - 1) - log ratio, the "k3" estimator of KL(old || new)
      (Schulman's blog "Approximating KL divergence"; cleanrl's `approx_kl`): unbiased and
      always >= 0. Used for the `target_kl` early stop. Both diagnostics are detached.
    """
    log_ratio = logprobs - old_logprobs.detach()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).to(ratio.dtype), mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
    return loss, clipfrac, approx_kl


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, value_clip: float
) -> tuple[Tensor, Tensor]:
    """Clipped value loss (cleanrl `clip_vloss`, OpenAI baselines, TRL PPO).

    V_clip = old_V + clip(V - old_V, -c, c);
    loss = 0.5 * masked_mean(max((V - R)^2, (V_clip - R)^2)).
    Like the policy clip, it keeps the value head from moving far from the rollout's values in
    one update. Returns (loss scalar, vf_clipfrac = fraction of valid tokens where the clipped
    error is the larger one, detached).
    """
    old_values = old_values.detach()
    v_clipped = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
    err_unclipped = (values - returns) ** 2
    err_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(err_unclipped, err_clipped), mask)
    with torch.no_grad():
        vf_clipfrac = masked_mean((err_clipped > err_unclipped).to(values.dtype), mask)
    return loss, vf_clipfrac


def entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Masked mean over tokens of the policy entropy H = logsumexp(z) - sum softmax(z) * z.

    logits: [B, T, V]; mask: [B, T]. A diagnostic (collapse shows as entropy going to 0).
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    entropy = torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)
    return masked_mean(entropy, mask)


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, section 2.2):

        e_t = clip(KL_t / KL_target - 1, -0.2, 0.2);   beta_{t+1} = beta_t * (1 + K_beta * e_t)

    with K_beta = n_steps / horizon: the coefficient grows when the measured KL is above the
    target and shrinks when below, by at most 20% per `horizon` steps.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError("AdaptiveKLController needs target > 0 and horizon > 0")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Update from the KL measured over the last `n_steps` samples; returns the new coef."""
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value
