"""SimPO, Meng et al. 2024 ("SimPO: Simple Preference Optimization with a Reference-Free
Reward"), eq. 6:

    L_SimPO = -log sigmoid(beta/|y_w| * logp_theta(y_w) - beta/|y_l| * logp_theta(y_l) - gamma)

Reference-free and length-normalised; `gamma` is the absolute target reward margin. The paper
and its code parameterise it as gamma/beta (`gamma_beta_ratio`), TRL's `CPOConfig.simpo_gamma`
is the absolute gamma: `resolve_simpo_gamma` turns either convention into the absolute value.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from alignbench.losses.common import LossOutput


def resolve_simpo_gamma(beta: float, gamma_beta_ratio: float, convention: str) -> float:
    """Absolute gamma: 'ratio' -> gamma_beta_ratio * beta (the paper's gamma/beta);
    'absolute' -> the value itself (TRL's `simpo_gamma`)."""
    if convention == "ratio":
        return gamma_beta_ratio * beta
    if convention == "absolute":
        return gamma_beta_ratio
    raise ValueError(f"gamma_convention must be 'ratio' or 'absolute', got {convention!r}")


def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    beta: float,
    gamma: float,
) -> LossOutput:
    """SimPO loss per example (eq. 6). Inputs are [B] *summed* policy log-probs and [B]
    response-token counts (clamped to >= 1); `gamma` is absolute. Rewards are
    beta * average log-prob (the paper's reward, eq. 4), detached."""
    chosen_rewards = beta * policy_chosen_logps / chosen_lengths.clamp(min=1)
    rejected_rewards = beta * policy_rejected_logps / rejected_lengths.clamp(min=1)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return LossOutput(
        losses=losses,
        chosen_rewards=chosen_rewards.detach(),
        rejected_rewards=rejected_rewards.detach(),
    )
