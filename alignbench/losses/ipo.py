"""IPO, Azar et al. 2023 ("A General Theoretical Paradigm to Understand Learning from Human
Preferences"), eq. 17:

    L_IPO = (h - 1/(2 tau))^2,   h = r(y_w) - r(y_l),   r(y) = logp_theta(y) - logp_ref(y).

Two conventions for `logp`, chosen by `length_normalize`:

- False: summed sequence log-likelihoods, as the paper writes it;
- True: each log-ratio divided by its number of response tokens (clamped to >= 1), as TRL
  1.16 does for `DPOTrainer(loss_type="ipo")` (TRL says the IPO authors confirmed this is the
  form behind the paper's results). Being a squared loss with a fixed target 1/(2 tau), the two
  are not equivalent: with sums, the same tau asks for a per-token margin |y| times smaller.

Rewards follow TRL 1.16: tau * (policy - ref) on the *summed* log-probs, whichever convention
the loss uses (TRL computes its logged rewards before the IPO normalisation).
"""

from __future__ import annotations

from torch import Tensor

from alignbench.losses.common import LossOutput


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    tau: float,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    length_normalize: bool = True,
) -> LossOutput:
    """IPO loss per example (eq. 17). Inputs are [B] *summed* log-probs; lengths are [B]
    response-token counts, required when `length_normalize` is true."""
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    if length_normalize:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("ipo_loss(length_normalize=True) needs chosen_lengths and rejected_lengths")
        h = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / rejected_lengths.clamp(min=1)
    else:
        h = chosen_logratios - rejected_logratios
    losses = (h - 1.0 / (2.0 * tau)) ** 2
    return LossOutput(
        losses=losses,
        chosen_rewards=tau * chosen_logratios.detach(),
        rejected_rewards=tau * rejected_logratios.detach(),
    )
