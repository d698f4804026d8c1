"""PPO / RLHF on the built-in task: the reward-model stage and the PPO loop (FAST budgets)."""

from __future__ import annotations

import math

import pytest
import torch

from alignbench.models import reward_model as rm_module
from alignbench.data import builtin_task as task
from alignbench.config import compose
from alignbench.models.generation import response_token_logps, sample
from alignbench.tracking.null import NullTracker
from alignbench.training.loop import NonFiniteLoss
from alignbench.training.run import train
from alignbench.training.settings import run_settings
from alignbench.training.setup import prepare
from helpers import FAST, PPO_FAST, RLOO_FAST

REQUIRED = ["train/loss", "ppo/kl", "ppo/clipfrac", "ppo/approx_kl", "ppo/value_loss", "ppo/entropy",
            "ppo/kl_coef", "ppo/rm_score", "ppo/gold_reward"]


@pytest.fixture(scope="module")
def prepared_fast(shared_cache):
    cfg = compose(["method=ppo", *FAST, "method.reward_model.steps=40"])
    return cfg, prepare(run_settings(cfg))


def _logged(tracker: NullTracker, key: str) -> list[float]:
    return [m[key] for _, m in tracker.metrics if key in m]


def test_reward_model_learns_and_is_cached(prepared_fast, reward_model_trainings, shared_cache):
    _, prepared = prepared_fast
    # Plain settings, no config: the reward model's module reads nothing else.
    settings = rm_module.RewardModelSettings(steps=40, lr=1e-3, batch_size=32, heldout_fraction=0.1, max_length=128,
                                             max_prompt_length=64, adam_betas=(0.9, 0.999), weight_decay=0.0,
                                             max_grad_norm=1.0, seed=0, score_batch_size=16, cache_dir=str(shared_cache))
    rm = rm_module.load_or_train_reward_model(settings, prepared.models, prepared.train_records)
    stats = rm.stats
    assert {"rm/pair_accuracy", "rm/train_loss"} <= set(stats)
    assert stats["rm/train_loss"] < math.log(2)  # below the loss of a constant reward
    assert stats["rm/pair_accuracy"] > 0.5  # held-out slice of the training pairs
    # Its ordering agrees with the noise-free gold reward well above chance.
    pairs = prepared.train_records + prepared.eval_records
    r_c = rm.score([p.prompt for p in pairs], [p.chosen for p in pairs])
    r_r = rm.score([p.prompt for p in pairs], [p.rejected for p in pairs])
    gold = [task.gold_reward(p.prompt, p.chosen) > task.gold_reward(p.prompt, p.rejected) for p in pairs]
    agree = sum((a > b) == g for a, b, g in zip(r_c, r_r, gold)) / len(pairs)
    assert agree > 0.6, agree
    assert rm.name == "reward_model" and len(r_c) == len(pairs)
    assert rm.stats["rm/n_heldout_pairs"] == max(1, int(len(prepared.train_records) * 0.1))

    trained = len(reward_model_trainings)
    again = rm_module.load_or_train_reward_model(settings, prepared.models, prepared.train_records)
    assert again.path == rm.path
    assert len(reward_model_trainings) == trained  # the second call trained nothing
    assert again.score(["Describe the hotel.\n"], ["the room was great."]) == \
        rm.score(["Describe the hotel.\n"], ["the room was great."])


def test_policy_forward_matches_generation_logps(prepared_fast):
    """The loop's own forward scores exactly the sampled response tokens (column alignment)."""
    from alignbench.training.online import policy_forward

    cfg, prepared = prepared_fast
    models = prepared.models
    samples = sample(models.policy, models.tokenizer, prepared.eval_prompts[:6], max_new_tokens=10,
                     temperature=1.0, max_prompt_length=cfg.train.max_prompt_length, batch_size=6, seed=1,
                     device=models.device)
    head = torch.nn.Linear(models.policy.config.hidden_size, 1)
    with torch.no_grad():
        logps, values, logits = policy_forward(models.policy, head, samples.input_ids, samples.attention_mask,
                                               samples.prompt_width)
    expected = response_token_logps(models.policy, samples, 6, models.device)
    mask = samples.response_mask[:, samples.prompt_width:]
    assert logps.shape == values.shape == mask.shape == expected.shape
    assert torch.allclose(logps * mask, expected, atol=1e-5)


def test_ppo_end_to_end_fast(workdir):
    tracker = NullTracker()
    result = train(compose(PPO_FAST), tracker)
    for key in REQUIRED:
        values = _logged(tracker, key)
        assert values, f"{key} never logged"
        assert all(math.isfinite(v) for v in values), (key, values)
    assert {"rm/pair_accuracy", "rm/train_loss"} <= {k for _, m in tracker.metrics for k in m}
    for key in ("eval/win_rate", "eval/win_rate_ci_low", "eval/kl", "train/tokens"):
        assert math.isfinite(result.metrics[key]), key
    logged = {k for _, m in tracker.metrics for k in m}
    assert "time/train_seconds" in logged and "train/seconds" not in logged  # one name for the training seconds
    assert {"setup_seconds", "reward_model_seconds", "train_seconds", "eval_seconds"} <= set(result.timings)
    assert [s for s, _ in result.history] == [3, 6]


def test_ppo_gold_reward_and_adaptive_kl(workdir):
    """PPO-GT optimises the gold reward itself; the adaptive controller moves kl_coef."""
    tracker = NullTracker()
    train(compose([*PPO_FAST, "method.reward=gold", "method.adaptive_kl=true", "method.adaptive_kl_target=0.01",
                   "method.adaptive_kl_horizon=10"]), tracker)
    assert not _logged(tracker, "ppo/rm_score")  # no reward model was needed
    assert _logged(tracker, "ppo/gold_reward") == _logged(tracker, "ppo/score")
    coefs = _logged(tracker, "ppo/kl_coef")
    assert coefs[0] == 0.05 and len(set(coefs)) > 1, coefs


def test_ppo_nan_loss_fails_the_run(workdir):
    with pytest.raises(NonFiniteLoss):
        train(compose([*PPO_FAST, "fault.nan_loss_at_step=2"]))


# --------------------------------------------------------------------------- RLOO (critic-free, the same loop)



def test_rloo_end_to_end_fast_has_no_critic(workdir, monkeypatch):
    from alignbench.training import online as ppo_module

    batches = []
    real = ppo_module.sample

    def recording_sample(model, tokenizer, prompts, **kw):
        batches.append(list(prompts))
        return real(model, tokenizer, prompts, **kw)

    monkeypatch.setattr(ppo_module, "sample", recording_sample)
    tracker = NullTracker()
    result = train(compose(RLOO_FAST), tracker)
    for key in ("train/loss", "ppo/kl", "ppo/clipfrac", "ppo/approx_kl", "ppo/entropy", "ppo/rm_score"):
        values = _logged(tracker, key)
        assert values and all(math.isfinite(v) for v in values), key
    assert not _logged(tracker, "ppo/value_loss")  # no value head, no value loss
    assert math.isfinite(result.metrics["eval/win_rate"]) and [s for s, _ in result.history] == [3, 6]
    # every rollout batch: 8 responses = 4 prompts x k=2, each prompt's samples side by side
    assert batches and all(len(b) == 8 and b[0::2] == b[1::2] and len(set(b)) == 4 for b in batches)
    # 6 optimiser steps of 2 epochs x 2 minibatches per rollout batch: 2 rollouts (evaluation samples aside)
    assert result.metrics["ppo/rollouts"] == 2


@pytest.mark.parametrize("override, message", [("method.rloo_k=1", "method.rloo_k=1"),
                                               ("method.rollout_batch_size=6", "multiple of method.rloo_k=4")])
def test_rloo_config_errors(override, message):
    from alignbench.config import ConfigError, validate

    with pytest.raises(ConfigError, match=message):
        validate(compose(["method=rloo", override]))
