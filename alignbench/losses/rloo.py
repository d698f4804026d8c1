"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics:
Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs", eq. 9;
Kool et al. 2019).

k responses y_1..y_k are sampled for each prompt x; each is scored once, as a whole sequence,
with the KL penalty folded into its reward (R_i = r(x, y_i) - beta_KL * KL_i). The baseline of
sample i is the mean reward of the *other* k-1 samples of the same prompt, so it is unbiased
and needs no value network:

    A_i = R_i - 1/(k-1) * sum_{j != i} R_j

Every response token of y_i gets advantage A_i; the policy update is PPO's clipped surrogate
(`alignbench.losses.ppo.clipped_policy_loss`), as in TRL's RLOOTrainer.
"""

from __future__ import annotations

from torch import Tensor


def rloo_advantages(sequence_rewards: Tensor, k: int) -> Tensor:
    """Leave-one-out advantages of `sequence_rewards` [P * k], grouped as k consecutive samples per
    prompt (prompt p owns rows p*k .. p*k+k-1). Returns [P * k]."""
    if k < 2:
        raise ValueError(f"RLOO needs k >= 2 samples per prompt, got {k}")
    if sequence_rewards.numel() % k:
        raise ValueError(f"{sequence_rewards.numel()} rewards do not split into groups of k={k}")
    grouped = sequence_rewards.view(-1, k)
    baseline = (grouped.sum(-1, keepdim=True) - grouped) / (k - 1)
    return (grouped - baseline).view(-1)


def rloo_token_advantages(rewards: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """RLOO's (advantages, returns) over the response tokens [B, R] from per-token `rewards` [B, R]:
    each response's leave-one-out advantage of its whole reward on every one of its tokens (`mask`),
    and its whole reward as the return of every column."""
    advantages = rloo_advantages(rewards.sum(-1), k)[:, None] * mask
    return advantages, rewards.sum(-1, keepdim=True).expand_as(mask)
