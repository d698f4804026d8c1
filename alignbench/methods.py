"""Every method on one screen: `METHODS` maps a method's name (`method.name`, conf/method/<name>.yaml)
to what the rest of alignbench needs to know of it. Config validation, the choice of loop, the
evaluator and the judges read this table; no other module compares a method's name.

Adding a method is one row here (with its objective and check beside it), one loss file
(alignbench/losses/<name>.py: pure tensor functions), one method config (conf/method/<name>.yaml)
and one search space (conf/search_space/<name>.yaml).

`objective(settings)` returns the function the method's loop calls, `settings` being the method's
config node (`cfg.method`): a `PairedLoss` (offline, paired), an `UnpairedLoss` (offline, unpaired:
KTO) or an `Advantages` (online), the three protocols below. The loss modules are imported inside the objectives: `config` reads this table, and validating a
config must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, Union

from alignbench.schemas import shown

if TYPE_CHECKING:
    from torch import Tensor

    from alignbench.losses.common import LossOutput
    from alignbench.losses.kto import KTOOutput


class PairedLoss(Protocol):
    """An offline paired method's loss on a batch of pairs: summed log-probs of the policy's chosen and
    rejected responses, their lengths in tokens, and the reference's log-probs ({"chosen", "rejected"},
    None for a reference-free method) -> per-pair losses and implicit rewards."""

    def __call__(self, policy_chosen: Tensor, policy_rejected: Tensor, chosen_lengths: Tensor,
                 rejected_lengths: Tensor, reference: dict[str, Tensor] | None) -> LossOutput: ...


class UnpairedLoss(Protocol):
    """An offline unpaired method's loss (KTO) on single labelled examples: policy and reference
    log-probs, which examples are desirable, policy and reference log-probs of the mismatched pairs
    (the KL estimate), and the mean across processes."""

    def __call__(self, logps: Tensor, ref_logps: Tensor, desirable: Tensor, policy_kl: Tensor, ref_kl: Tensor,
                 mean_across_processes: Callable) -> KTOOutput: ...


class Advantages(Protocol):
    """An online method's advantages: per-token rewards, the old values (None: critic-free), the
    response mask -> (advantages, returns)."""

    def __call__(self, rewards: Tensor, values: Tensor | None, mask: Tensor) -> tuple[Tensor, Tensor]: ...


@dataclass(frozen=True)
class Method:
    loop: str                          # "offline": fixed preference data | "online": sampled rollouts, a reward
    uses_reference: bool               # the objective reads the reference's log-probs (SimPO's does not)
    objective: Callable[[Any], Union[PairedLoss, UnpairedLoss, Advantages]]  # settings -> what the loop calls
    implicit_reward: Callable | None   # (policy logp, reference logp, response tokens) -> the reward behind
                                       # eval/pref_accuracy; None: the method has none (no pref accuracy)
    check: Callable                    # the composed config -> its first problem as one line, or None
    unpaired: bool = False             # trains on single labelled examples (each pair split in two): KTO
    value_head: bool = False           # online: a learned critic (PPO's GAE) rather than RLOO's baseline
    params: Callable | None = None     # settings -> the conventions in force, logged with the run's params


# --------------------------------------------------------------------------- implicit rewards

def log_ratio(policy_logps, reference_logps, n_tokens):
    """log pi(y) - log pi_ref(y): DPO's implicit reward (eq. 5, up to beta and the partition function);
    also the reward a KL-regularised RL policy (PPO, RLOO) is optimal for, up to a constant."""
    return policy_logps - reference_logps


def average_logp(policy_logps, reference_logps, n_tokens):
    """log pi(y) / |y|: SimPO's reference-free reward (eq. 4, up to beta)."""
    return policy_logps / n_tokens


# --------------------------------------------------------------------------- objectives

def dpo_objective(m) -> PairedLoss:
    from alignbench.losses.dpo import dpo_loss

    return lambda pc, pr, nc, nr, ref: dpo_loss(pc, pr, ref["chosen"], ref["rejected"], beta=m.beta,
                                                label_smoothing=m.label_smoothing)


def ipo_objective(m) -> PairedLoss:
    from alignbench.losses.ipo import ipo_loss

    return lambda pc, pr, nc, nr, ref: ipo_loss(pc, pr, ref["chosen"], ref["rejected"], tau=m.tau, chosen_lengths=nc,
                                                rejected_lengths=nr, length_normalize=m.length_normalize)


def ipo_params(m) -> dict:
    return {"method.convention": "mean over tokens (TRL)" if m.length_normalize else "sum over tokens (IPO paper)"}


def simpo_objective(m) -> PairedLoss:
    from alignbench.losses.simpo import simpo_loss

    gamma = simpo_params(m)["method.gamma"]
    return lambda pc, pr, nc, nr, ref: simpo_loss(pc, pr, nc, nr, beta=m.beta, gamma=gamma)


def simpo_params(m) -> dict:
    from alignbench.losses.simpo import resolve_simpo_gamma

    return {"method.gamma": resolve_simpo_gamma(m.beta, m.gamma_beta_ratio, m.gamma_convention)}


def kto_objective(m) -> UnpairedLoss:
    from alignbench.losses.kto import kto_loss

    def kto(logps, ref_logps, desirable, policy_kl, ref_kl, mean_across_processes):
        return kto_loss(logps, ref_logps, desirable, policy_kl, ref_kl, beta=m.beta,
                        desirable_weight=m.desirable_weight, undesirable_weight=m.undesirable_weight,
                        mean_across_processes=mean_across_processes)
    return kto


def ppo_objective(m) -> Advantages:
    from alignbench.losses.ppo import gae_advantages

    return lambda rewards, values, mask: gae_advantages(rewards, values, mask, m.gamma, m.lam)


def rloo_objective(m) -> Advantages:
    from alignbench.losses.rloo import rloo_token_advantages

    return lambda rewards, values, mask: rloo_token_advantages(rewards, mask, m.rloo_k)


# --------------------------------------------------------------------------- config checks

def _not_positive(cfg, *keys: str) -> str | None:
    for key in keys:
        value = cfg.method[key]
        if not isinstance(value, (int, float)) or value <= 0:
            return f"method.{key}={shown(value)}: must be > 0"
    return None


def check_dpo(cfg) -> str | None:
    m = cfg.method
    if problem := _not_positive(cfg, "beta"):
        return problem
    if not 0 <= m.label_smoothing < 0.5:
        return f"method.label_smoothing={shown(m.label_smoothing)}: must be in [0, 0.5)"
    return None


def check_ipo(cfg) -> str | None:
    return _not_positive(cfg, "tau")


def check_simpo(cfg) -> str | None:
    m = cfg.method
    if problem := _not_positive(cfg, "beta"):
        return problem
    if m.gamma_beta_ratio < 0:
        return f"method.gamma_beta_ratio={shown(m.gamma_beta_ratio)}: must be >= 0"
    if m.gamma_convention not in ("ratio", "absolute"):
        return f"method.gamma_convention={m.gamma_convention}: must be ratio or absolute"
    return None


def check_kto(cfg) -> str | None:
    return _not_positive(cfg, "beta", "desirable_weight", "undesirable_weight")


def check_online(cfg) -> str | None:
    """What PPO and RLOO share: the clipped surrogate, the KL penalty, the reward, the rollout sizes."""
    m = cfg.method
    if not 0 < m.clip_ratio < 1:
        return f"method.clip_ratio={shown(m.clip_ratio)}: must be in (0, 1)"
    if m.kl_coef < 0:
        return f"method.kl_coef={shown(m.kl_coef)}: must be >= 0"
    if m.reward not in ("model", "gold"):
        return f"method.reward={m.reward}: must be model or gold"
    if m.reward == "gold" and cfg.data.source != "builtin":
        return "method.reward=gold: the gold reward exists only on data=builtin and data=sentiment"
    return _not_positive(cfg, "rollout_batch_size", "ppo_epochs", "n_minibatches")


def check_rloo(cfg) -> str | None:
    m = cfg.method
    if problem := check_online(cfg):
        return problem
    if not isinstance(m.rloo_k, int) or m.rloo_k < 2:
        return f"method.rloo_k={m.rloo_k}: must be an integer >= 2 (the leave-one-out baseline needs 2 samples)"
    if m.rollout_batch_size % m.rloo_k:
        return f"method.rollout_batch_size={m.rollout_batch_size}: must be a multiple of method.rloo_k={m.rloo_k}"
    return None


# --------------------------------------------------------------------------- the table

METHODS: dict[str, Method] = {
    "ppo": Method("online", uses_reference=True, objective=ppo_objective, implicit_reward=log_ratio,
                  check=check_online, value_head=True),
    "dpo": Method("offline", uses_reference=True, objective=dpo_objective, implicit_reward=log_ratio, check=check_dpo),
    "ipo": Method("offline", uses_reference=True, objective=ipo_objective, implicit_reward=log_ratio, check=check_ipo,
                  params=ipo_params),
    "kto": Method("offline", uses_reference=True, objective=kto_objective, implicit_reward=log_ratio, check=check_kto,
                  unpaired=True),
    "simpo": Method("offline", uses_reference=False, objective=simpo_objective, implicit_reward=average_logp,
                    check=check_simpo, params=simpo_params),
    "rloo": Method("online", uses_reference=True, objective=rloo_objective, implicit_reward=log_ratio,
                   check=check_rloo),
}


def is_online(name: str) -> bool:
    """Whether `name` is a known method trained on sampled rollouts (False for an unknown name)."""
    method = METHODS.get(name)
    return method is not None and method.loop == "online"
