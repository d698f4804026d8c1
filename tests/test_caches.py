"""Every cache is keyed by content: an unchanged input hits, a changed one misses.

Caches: the SFT model, the tokenised training data, the reference log-probs of the training data
(a second run with an unchanged reference does no reference forward pass), the reference side of
evaluation (samples, judge scores, log-probs), and the PPO reward model.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from alignbench.models import loading as models_module
from alignbench.training import run as train_module
from alignbench.config import compose
from alignbench.training.run import REFERENCE_FORWARDS, NullTracker, prepare, reference_pair_logps, train
from conftest import FAST


class Trained(Exception):
    """Raised by a stand-in SFT stage: the cache missed and would have trained."""


@pytest.fixture
def no_sft_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise Trained
    monkeypatch.setattr(models_module, "sft_train", refuse)


def test_sft_model_cache_hits_unchanged_and_misses_changed_inputs(workdir, monkeypatch):
    prepare(compose(FAST))  # the SFT stage runs at most once per session (shared cache)
    def refuse(*args, **kwargs):
        raise Trained
    monkeypatch.setattr(models_module, "sft_train", refuse)
    prepare(compose(FAST))  # hit: no training
    for change in ("seed=1", "train.max_length=60", "model.hidden_size=64", "model.sft.steps=61",
                   "model.sft.n_examples=999"):
        with pytest.raises(Trained):
            prepare(compose([*FAST, change]))


@pytest.fixture
def fresh_ref_cache(shared_cache, tmp_path):
    """A cache dir with the session's SFT model and task pairs but cold reference/token caches."""
    from alignbench.bench.main import scratch_cache

    return scratch_cache(shared_cache, tmp_path / "fresh")


def _records_and_models(cfg):
    prepared = prepare(cfg)
    return prepared.train_records, prepared.models


def test_second_dpo_run_does_no_reference_forward(workdir):
    cfg = compose([*FAST, "method=dpo"])
    train(cfg, NullTracker())
    before = REFERENCE_FORWARDS["count"]
    result = train(compose([*FAST, "method=dpo", "method.beta=0.3", "method.lr=1e-3"]), NullTracker())
    assert REFERENCE_FORWARDS["count"] == before  # a new trial (beta, lr) with the same reference
    assert result.timings["ref_seconds"] < 5


def test_second_kto_run_does_no_reference_forward(workdir):
    train(compose([*FAST, "method=kto"]), NullTracker())
    before = REFERENCE_FORWARDS["count"]
    train(compose([*FAST, "method=kto", "method.beta=0.2"]), NullTracker())
    assert REFERENCE_FORWARDS["count"] == before


def test_reference_logps_miss_on_changed_max_length_data_or_reference(workdir, fresh_ref_cache):
    cfg = compose([*FAST, f"cache_dir={fresh_ref_cache}"])  # cold reference caches
    records, models = _records_and_models(cfg)
    tokenizer, t = models.tokenizer, cfg.train
    tokens = train_module.data.tokenize_pairs(records, tokenizer, t.max_length, t.max_prompt_length)

    count = REFERENCE_FORWARDS["count"]
    first = reference_pair_logps(cfg, models, tokens)
    assert REFERENCE_FORWARDS["count"] == count + 1  # cold: one reference pass
    again = reference_pair_logps(cfg, models, tokens)
    assert REFERENCE_FORWARDS["count"] == count + 1  # warm: none
    assert torch.equal(first["chosen"], again["chosen"])

    shorter = train_module.data.tokenize_pairs(records, tokenizer, 40, t.max_prompt_length)
    reference_pair_logps(cfg, models, shorter)
    assert REFERENCE_FORWARDS["count"] == count + 2  # changed max length

    fewer = train_module.data.tokenize_pairs(records[1:], tokenizer, t.max_length, t.max_prompt_length)
    reference_pair_logps(cfg, models, fewer)
    assert REFERENCE_FORWARDS["count"] == count + 3  # changed data

    other_reference = dataclasses.replace(models, key=models.key + "-other-seed")
    reference_pair_logps(cfg, other_reference, tokens)
    assert REFERENCE_FORWARDS["count"] == count + 4  # changed reference model (e.g. another seed's SFT)


def test_reference_key_follows_the_seed(workdir, no_sft_training):
    """A changed seed gives another SFT model, hence another reference key for every reference cache."""
    with pytest.raises(Trained):
        prepare(compose([*FAST, "seed=7"]))


def test_tokenised_data_cache(workdir, fresh_ref_cache, monkeypatch):
    cfg = compose([*FAST, f"cache_dir={fresh_ref_cache}"])
    records, models = _records_and_models(cfg)
    calls = {"n": 0}
    real = train_module.data.tokenize_pairs

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module.data, "tokenize_pairs", counting)
    first = train_module.cached_tokenize_pairs(cfg, records, models.tokenizer, models.key)
    n = calls["n"]
    again = train_module.cached_tokenize_pairs(cfg, records, models.tokenizer, models.key)
    assert calls["n"] == n  # hit
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert torch.equal(first["chosen_input_ids"], real(records, models.tokenizer, cfg.train.max_length,
                                                       cfg.train.max_prompt_length)["chosen_input_ids"])
    train_module.cached_tokenize_pairs(compose([*FAST, f"cache_dir={fresh_ref_cache}", "train.max_length=40"]),
                                       records, models.tokenizer, models.key)
    assert calls["n"] == n + 1  # changed max length
    train_module.cached_tokenize_pairs(cfg, records[1:], models.tokenizer, models.key)
    assert calls["n"] == n + 2  # changed data
    train_module.cached_tokenize_pairs(cfg, records, models.tokenizer, models.key + "-other-tokenizer")
    assert calls["n"] == n + 3  # changed model / tokenizer


def test_reference_eval_side_cached(workdir):
    prepare(compose(FAST))
    assert prepare(compose(FAST)).evaluator.cache_hit is True
    assert prepare(compose([*FAST, "eval.max_new_tokens=11"])).evaluator.cache_hit is False
    assert prepare(compose([*FAST, "eval.max_new_tokens=11"])).evaluator.cache_hit is True
    assert prepare(compose([*FAST, "eval.n_prompts=20"])).evaluator.cache_hit is False  # other prompts


@pytest.mark.skipif(importlib.util.find_spec("alignbench.models.reward_model") is None,
                    reason="alignbench/reward_model.py not written yet")
def test_reward_model_cache(workdir, reward_model_trainings):
    from alignbench.models import reward_model as reward_model

    cfg = compose([*FAST, "method=ppo", "method.reward_model.steps=5"])
    records, models = _records_and_models(cfg)
    reward_model.load_or_train_reward_model(cfg, models, records)
    before = len(reward_model_trainings)
    reward_model.load_or_train_reward_model(cfg, models, records)
    assert len(reward_model_trainings) == before  # hit
    reward_model.load_or_train_reward_model(cfg, models, records[1:])
    assert len(reward_model_trainings) == before + 1  # changed data
    reward_model.load_or_train_reward_model(compose([*FAST, "method=ppo", "method.reward_model.steps=6"]),
                                            models, records)
    assert len(reward_model_trainings) == before + 2  # changed reward-model config
