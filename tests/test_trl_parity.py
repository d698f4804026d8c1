"""Our objectives against TRL 1.16's own loss code, on the same random inputs (to 1e-5).

TRL's loss code is reached without building trainers: the trainers' loss methods are called
as plain functions with a lightweight stand-in `self` (`types.SimpleNamespace`) and a
stand-in model that returns precomputed per-token log-probs the way TRL's fused-LM-head
forward does (`outputs.log_probs`, 0 on non-completion positions). This runs TRL's real
arithmetic (log-ratios, normalisation, KL estimate, rewards) in milliseconds.

Entry points used:
- `trl.DPOTrainer._compute_loss` (loss_type "sigmoid" and "ipo"),
- `trl.KTOTrainer._compute_loss` (loss_type "kto"),
- `trl.experimental.cpo.CPOTrainer.cpo_loss` (loss_type "simpo"; and "sigmoid" for the
  label-smoothed cDPO form, which TRL 1.16's DPOTrainer no longer applies to "sigmoid"),
- `trl.experimental.cpo.CPOTrainer.get_batch_logps` (TRL's length-averaged log-probs).

TRL must be importable: an ImportError fails this module, it is never skipped.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import trl
    from trl import DPOTrainer, KTOTrainer
    from trl.experimental.cpo import CPOTrainer

from alignbench.losses.dpo import dpo_loss
from alignbench.losses.ipo import ipo_loss
from alignbench.losses.kto import kto_loss, mismatched_indices
from alignbench.losses.simpo import resolve_simpo_gamma, simpo_loss

TOL = dict(rtol=1e-5, atol=1e-5)
DTYPE = torch.float64
SEQ_LEN = 12


def test_trl_version_is_the_pinned_one():
    assert trl.__version__ == "1.16.0"


# ----------------------------------------------------------------------------- stand-ins


class RowTableModel:
    """Stands in for a TRL model called with `fused_lm_head=True`.

    Column 0 of `input_ids` is a row id into `table` ([N, SEQ_LEN - 1] per-token log-probs,
    already 0 outside the completion, as TRL's fused head returns for label -100)."""

    training = True

    def __init__(self, table: torch.Tensor):
        self.table = table

    def __call__(self, input_ids, **kwargs):
        log_probs = self.table[input_ids[:, 0]]
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def fake_accelerator():
    identity = lambda x: x  # noqa: E731  (single process: gather is the identity)
    return SimpleNamespace(device=torch.device("cpu"), gather=identity, gather_for_metrics=identity)


def fake_trainer(**attrs):
    base = dict(
        model=SimpleNamespace(training=True),
        accelerator=fake_accelerator(),
        aux_loss_enabled=False,
        precompute_ref_logps=True,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    return SimpleNamespace(**{**base, **attrs})


def random_sequences(n: int, g: torch.Generator):
    """n sequences of SEQ_LEN tokens: a prompt of 2-4 tokens, a completion of 1-7, padding.

    Returns (input_ids with the row id in column 0, attention_mask, completion_mask,
    per-token log-probs [n, SEQ_LEN - 1] aligned with completion_mask[:, 1:],
    summed log-probs [n], completion lengths [n])."""
    prompt_len = torch.randint(2, 5, (n,), generator=g)
    comp_len = torch.randint(1, 8, (n,), generator=g)
    pos = torch.arange(SEQ_LEN)
    completion_mask = ((pos >= prompt_len[:, None]) & (pos < (prompt_len + comp_len)[:, None])).long()
    attention_mask = (pos < (prompt_len + comp_len)[:, None]).long()
    input_ids = torch.randint(5, 100, (n, SEQ_LEN), generator=g)
    input_ids[:, 0] = torch.arange(n)
    per_token = -3 * torch.rand(n, SEQ_LEN - 1, generator=g, dtype=DTYPE) * completion_mask[:, 1:]
    return input_ids, attention_mask, completion_mask, per_token, per_token.sum(1), completion_mask.sum(1)


# ----------------------------------------------------------------------------- DPO / IPO


def _trl_dpo_per_example(loss_type: str, beta: float, seed: int, B: int = 6):
    """Per-example (loss, chosen reward, rejected reward) from TRL's DPOTrainer._compute_loss,
    one example per call (TRL returns the batch mean), plus our inputs."""
    g = torch.Generator().manual_seed(seed)
    ids, attn, cmask, per_token, sums, lengths = random_sequences(2 * B, g)  # rows: chosen then rejected
    ref = sums + torch.randn(2 * B, generator=g, dtype=DTYPE)  # reference log-probs near the policy's
    model = RowTableModel(per_token)
    losses, chosen_rewards, rejected_rewards = [], [], []
    for i in range(B):
        rows = torch.tensor([i, B + i])  # TRL's batch layout: [chosen; rejected]
        inputs = dict(
            input_ids=ids[rows], attention_mask=attn[rows], completion_mask=cmask[rows],
            ref_chosen_logps=ref[i : i + 1], ref_rejected_logps=ref[B + i : B + i + 1],
        )
        me = fake_trainer(
            ld_alpha=None, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
            beta=beta, label_smoothing=0.0, use_weighting=False,
        )
        loss = DPOTrainer._compute_loss(me, model, inputs, return_outputs=False)
        losses.append(loss.item())
        chosen_rewards.append(me._metrics["train"]["rewards/chosen"][-1])
        rejected_rewards.append(me._metrics["train"]["rewards/rejected"][-1])
    ours_inputs = dict(
        policy_chosen_logps=sums[:B], policy_rejected_logps=sums[B:],
        ref_chosen_logps=ref[:B], ref_rejected_logps=ref[B:],
    )
    trl_out = tuple(torch.tensor(x, dtype=DTYPE) for x in (losses, chosen_rewards, rejected_rewards))
    return trl_out, ours_inputs, (lengths[:B], lengths[B:])


def _assert_matches(ours, trl_losses, trl_chosen, trl_rejected):
    torch.testing.assert_close(ours.losses, trl_losses, **TOL)
    torch.testing.assert_close(ours.chosen_rewards, trl_chosen, **TOL)
    torch.testing.assert_close(ours.rejected_rewards, trl_rejected, **TOL)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_sigmoid_matches_trl(beta):
    (trl_losses, trl_c, trl_r), inputs, _ = _trl_dpo_per_example("sigmoid", beta, seed=1)
    _assert_matches(dpo_loss(**inputs, beta=beta), trl_losses, trl_c, trl_r)


def test_dpo_label_smoothing_matches_trl_conservative_form():
    # TRL 1.16's DPOTrainer ignores label_smoothing for "sigmoid"; its cDPO form lives in
    # CPOTrainer.cpo_loss(loss_type="sigmoid"): -(1-eps) logsig(beta*d) - eps logsig(-beta*d),
    # d = chosen - rejected of its inputs. Fed DPO's log-ratios, it is label-smoothed DPO, and
    # its rewards (beta * input) are DPO's rewards.
    g = torch.Generator().manual_seed(2)
    pc, pr, rc, rr = (-20 * torch.rand(8, generator=g, dtype=DTYPE) for _ in range(4))
    beta, eps = 0.2, 0.15
    me = SimpleNamespace(alpha=0.0, loss_type="sigmoid", beta=beta, label_smoothing=eps, accelerator=fake_accelerator())
    trl_losses, trl_c, trl_r = CPOTrainer.cpo_loss(me, pc - rc, pr - rr)
    _assert_matches(dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps), trl_losses, trl_c, trl_r)


def test_ipo_length_normalised_matches_trl():
    tau = 0.1
    (trl_losses, trl_c, trl_r), inputs, (lc, lr) = _trl_dpo_per_example("ipo", tau, seed=3)
    ours = ipo_loss(**inputs, tau=tau, chosen_lengths=lc, rejected_lengths=lr, length_normalize=True)
    _assert_matches(ours, trl_losses, trl_c, trl_r)
    # the paper's summed form differs whenever some response has more than one token
    summed = ipo_loss(**inputs, tau=tau, length_normalize=False)
    assert not torch.allclose(summed.losses, ours.losses)


def test_ipo_summed_matches_trl_eq17_on_sums():
    # TRL's eq. 17 code without its normalisation (CPOTrainer.cpo_loss, loss_type "ipo",
    # whatever log-probs it is given): (d - 1/(2 beta))^2. Fed summed log-ratios it is the
    # paper's form; its rewards beta * input equal ours (tau * summed log-ratio).
    g = torch.Generator().manual_seed(4)
    pc, pr, rc, rr = (-20 * torch.rand(8, generator=g, dtype=DTYPE) for _ in range(4))
    tau = 0.3
    me = SimpleNamespace(alpha=0.0, loss_type="ipo", beta=tau, label_smoothing=0.0, accelerator=fake_accelerator())
    trl_losses, trl_c, trl_r = CPOTrainer.cpo_loss(me, pc - rc, pr - rr)
    _assert_matches(ipo_loss(pc, pr, rc, rr, tau=tau, length_normalize=False), trl_losses, trl_c, trl_r)


# ----------------------------------------------------------------------------- KTO


def _kto_inputs(B: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    # rows 0..B-1: matched (x_i, y_i); rows B..2B-1: mismatched KL pairs (x_i, y_j)
    ids, attn, cmask, per_token, sums, _ = random_sequences(2 * B, g)
    ref = sums + 0.5 * torch.randn(2 * B, generator=g, dtype=DTYPE)
    label = torch.tensor([True, False, True, True, False, False, True, False][:B])
    return ids, attn, cmask, per_token, sums, ref, label


def _kto_batch(ids, attn, cmask, ref, label, rows, B):
    kl = torch.arange(B, 2 * B)
    return dict(
        input_ids=ids[rows], attention_mask=attn[rows], completion_mask=cmask[rows], label=label[rows],
        ref_logps=ref[rows], KL_input_ids=ids[kl], KL_attention_mask=attn[kl], KL_completion_mask=cmask[kl],
        ref_KL_logps=ref[kl],
    )


def _kto_trainer(beta, wd, wu):
    me = fake_trainer(calculate_KL=True, loss_type="kto", beta=beta, desirable_weight=wd, undesirable_weight=wu)
    me._compute_kl_logps = lambda model, batch: KTOTrainer._compute_kl_logps(me, model, batch)  # TRL's own
    return me


@pytest.mark.parametrize("beta,wd,wu", [(0.1, 1.0, 1.0), (0.3, 1.5, 0.7)])
def test_kto_matches_trl(beta, wd, wu):
    B = 8
    ids, attn, cmask, per_token, sums, ref, label = _kto_inputs(B, seed=5)
    model = RowTableModel(per_token)
    ours = kto_loss(sums[:B], ref[:B], label, sums[B:], ref[B:], beta=beta, desirable_weight=wd, undesirable_weight=wu)

    # per example: one matched example per call, the same KL pairs every time
    # (TRL returns the mean over the batch; its KL estimate uses only the KL rows)
    trl_losses, trl_rewards = [], []
    for i in range(B):
        me = _kto_trainer(beta, wd, wu)
        loss = KTOTrainer._compute_loss(me, model, _kto_batch(ids, attn, cmask, ref, label, torch.tensor([i]), B), False)
        trl_losses.append(loss.item())
        key = "rewards/chosen" if label[i] else "rewards/rejected"
        trl_rewards.append(me._metrics["train"][key][-1])
        assert me._metrics["train"]["kl"][-1] == pytest.approx(ours.kl.item(), abs=1e-5)
    torch.testing.assert_close(ours.losses, torch.tensor(trl_losses, dtype=DTYPE), **TOL)
    torch.testing.assert_close(ours.rewards, torch.tensor(trl_rewards, dtype=DTYPE), **TOL)

    # whole batch: TRL's mean loss and its kl equal ours
    me = _kto_trainer(beta, wd, wu)
    loss = KTOTrainer._compute_loss(me, model, _kto_batch(ids, attn, cmask, ref, label, torch.arange(B), B), False)
    assert loss.item() == pytest.approx(ours.losses.mean().item(), abs=1e-5)
    assert me._metrics["train"]["kl"][-1] == pytest.approx(ours.kl.item(), abs=1e-5)


def test_kto_negative_kl_clamped_like_trl():
    B = 4
    ids, attn, cmask, per_token, sums, ref, label = _kto_inputs(B, seed=6)
    ref = ref.clone()
    ref[B:] = sums[B:] + 2.0  # policy below reference on every KL pair: raw estimate -2 -> z0 = 0
    ours = kto_loss(sums[:B], ref[:B], label[:B], sums[B:], ref[B:], beta=0.1)
    me = _kto_trainer(0.1, 1.0, 1.0)
    loss = KTOTrainer._compute_loss(me, RowTableModel(per_token), _kto_batch(ids, attn, cmask, ref, label, torch.arange(B), B), False)
    assert ours.kl.item() == 0.0 and me._metrics["train"]["kl"][-1] == 0.0
    assert loss.item() == pytest.approx(ours.losses.mean().item(), abs=1e-5)


def test_kto_mismatched_pairs_match_trl_rotation():
    # TRL's KTOTrainer._prepare_dataset builds the KL completions per batch as
    #   examples["KL_completion_ids"] = [completions[-1]] + completions[:-1]
    completions = ["y0", "y1", "y2", "y3", "y4"]
    trl_kl_completions = [completions[-1]] + completions[:-1]
    assert [completions[j] for j in mismatched_indices(len(completions))] == trl_kl_completions


# ----------------------------------------------------------------------------- SimPO


@pytest.mark.parametrize("beta,gamma_beta_ratio", [(2.5, 0.5), (10.0, 0.3)])
def test_simpo_matches_trl_cpo(beta, gamma_beta_ratio):
    # TRL computes average log-probs itself (get_batch_logps(average_log_prob=True));
    # we take sums and lengths from the same logits and labels.
    g = torch.Generator().manual_seed(7)
    B, V = 6, 11
    logits = torch.randn(2 * B, SEQ_LEN, V, generator=g, dtype=DTYPE)
    _, _, cmask, _, _, _ = random_sequences(2 * B, g)
    labels = torch.randint(0, V, (2 * B, SEQ_LEN), generator=g).masked_fill(cmask == 0, -100)
    trl_avg = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    sums = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=False)
    lengths = (labels[:, 1:] != -100).sum(1)

    # TRL's simpo_gamma is the *absolute* gamma: it computes beta * (d - simpo_gamma / beta)
    gamma = resolve_simpo_gamma(beta, gamma_beta_ratio, "ratio")
    me = SimpleNamespace(
        alpha=0.0, loss_type="simpo", beta=beta, simpo_gamma=gamma, label_smoothing=0.0,
        accelerator=fake_accelerator(),
    )
    trl_losses, trl_c, trl_r = CPOTrainer.cpo_loss(me, trl_avg[:B], trl_avg[B:])
    ours = simpo_loss(sums[:B], sums[B:], lengths[:B], lengths[B:], beta=beta, gamma=gamma)
    _assert_matches(ours, trl_losses, trl_c, trl_r)
    # and 'absolute' passes TRL's simpo_gamma through unchanged
    ours_abs = simpo_loss(
        sums[:B], sums[B:], lengths[:B], lengths[B:], beta=beta,
        gamma=resolve_simpo_gamma(beta, me.simpo_gamma, "absolute"),
    )
    torch.testing.assert_close(ours_abs.losses, trl_losses, **TOL)
