"""KTO, Ethayarajh et al. 2024 ("KTO: Model Alignment as Prospect Theoretic Optimization"),
eqs. 7-8, as in TRL's `KTOTrainer(loss_type="kto")`:

    r(y)  = logp_theta(y|x) - logp_ref(y|x)                      (summed over response tokens)
    z0    = max(0, mean_i[logp_theta(y_j|x_i) - logp_ref(y_j|x_i)])  over mismatched pairs, detached
    desirable:    lambda_D * (1 - sigmoid(beta * (r(y) - z0)))
    undesirable:  lambda_U * (1 - sigmoid(beta * (z0 - r(y))))

z0 is the paper's reference point, a biased but low-variance estimate of KL(pi_theta || pi_ref)
from (prompt_i, completion_j), j != i, pairs in the same batch; no gradient flows through it.
Under DDP each process holds a slice of the batch, so the per-process mean is averaged over the
processes before the clamp (`mean_across_processes`, accelerate's `reduce`; TRL gathers the same
means), and every process uses the whole batch's z0. Slices of equal size make that the mean over
the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass
class KTOOutput:
    losses: Tensor  # [B] per-example loss (not reduced), in input order
    rewards: Tensor  # [B] detached beta * (policy - ref)
    kl: Tensor  # scalar z0, detached, >= 0


def mismatched_indices(batch_size: int, offset: int = 1) -> Tensor:
    """For each i, an index j != i whose completion is paired with prompt i for the KL estimate:
    j = (i - offset) mod n.

    offset=1 is TRL's pairing, (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1}). alignbench's unpaired
    view of paired data interleaves each prompt's two completions, so it uses offset=-2 (j = i+2),
    which never pairs a prompt with its own other completion. With batch_size <= |offset| no
    mismatched pair exists: returns an empty tensor (and `kto_loss` then uses z0 = 0).
    """
    if batch_size <= abs(offset):
        return torch.empty(0, dtype=torch.long)
    return torch.roll(torch.arange(batch_size), shifts=offset)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    policy_kl_logps: Tensor | None,
    ref_kl_logps: Tensor | None,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    mean_across_processes: Callable[[Tensor], Tensor] | None = None,
) -> KTOOutput:
    """KTO loss per example. `policy_logps`, `ref_logps`: [B] summed log-probs of (x_i, y_i);
    `desirable`: [B] bool; `*_kl_logps`: [K] summed log-probs of mismatched pairs (see
    `mismatched_indices`), or None / empty when the batch cannot form them (z0 = 0 then);
    `mean_across_processes`: averages this process's mean mismatched log-ratio with the other
    processes' (None: one process)."""
    if policy_kl_logps is None or ref_kl_logps is None or policy_kl_logps.numel() == 0:
        kl = policy_logps.new_zeros(())
    else:
        kl = (policy_kl_logps - ref_kl_logps).mean().detach()
        if mean_across_processes is not None:
            kl = mean_across_processes(kl)
        kl = kl.clamp(min=0)
    logratios = policy_logps - ref_logps
    desirable = desirable.to(torch.bool)
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios)))
    losses = torch.where(desirable, desirable_losses, undesirable_losses)
    return KTOOutput(losses=losses, rewards=beta * logratios.detach(), kl=kl)
