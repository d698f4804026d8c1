"""DPO, Rafailov et al. 2023 ("Direct Preference Optimization"), eq. 7.

    L_DPO = -log sigmoid(beta * [r(y_w) - r(y_l)]),   r(y) = logp_theta(y) - logp_ref(y)

with `logp` the log-likelihood summed over response tokens. With label smoothing eps > 0 we
use the conservative-DPO (cDPO, Mitchell 2023) form that TRL has used for its sigmoid losses
(TRL 1.16 keeps it in `CPOTrainer.cpo_loss`; its `DPOTrainer` ignores `label_smoothing` for
`loss_type="sigmoid"`): the label is flipped with probability eps,

    L = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h),  h = r(y_w) - r(y_l).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from alignbench.losses.common import LossOutput


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Sigmoid DPO loss per example (eq. 7), optionally label-smoothed (cDPO).

    All inputs are [B] summed sequence log-probs. Rewards are beta * (policy - ref), detached
    (the DPO paper's implicit reward, eq. 5, up to the partition function).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = beta * (chosen_logratios - rejected_logratios)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return LossOutput(
        losses=losses,
        chosen_rewards=beta * chosen_logratios.detach(),
        rejected_rewards=beta * rejected_logratios.detach(),
    )
