"""What every paired preference objective returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class LossOutput:
    """Per-example loss and the method's implicit rewards (for logging).

    `losses` is not reduced: the training loop takes the mean (or a weighted mean), so the
    same function serves gradient accumulation and per-example diagnostics.
    """

    losses: Tensor  # [B] per-example loss (not reduced), differentiable
    chosen_rewards: Tensor  # [B] detached implicit reward of the chosen response
    rejected_rewards: Tensor  # [B] detached implicit reward of the rejected response
