"""Every cache is keyed by content: an unchanged input hits, a changed one misses.

Caches: the SFT model, the tokenised training data, the reference log-probs of the training data
(a second run with an unchanged reference does no reference forward pass), the reference side of
evaluation (samples, judge scores, log-probs), and the PPO reward model.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from alignbench import cache
from alignbench.config import compose
from alignbench.data.tokenizing import tokenize_pairs
from alignbench.models import loading as models_module
from alignbench.tracking.null import NullTracker
from alignbench.training import reference as reference_module
from alignbench.training.reference import reference_pair_logps
from alignbench.training.run import train
from alignbench.training.settings import length_limits, load_settings, reward_model_settings, run_settings
from alignbench.training.setup import prepare
from helpers import FAST, count_calls


class Trained(Exception):
    """Raised by a stand-in SFT stage: the cache missed and would have trained."""


def test_sft_model_cache_hits_unchanged_and_misses_changed_inputs(workdir, monkeypatch):
    prepare(run_settings(compose(FAST)))  # the SFT stage runs at most once per session (shared cache)
    def refuse(*args, **kwargs):
        raise Trained
    monkeypatch.setattr(models_module, "sft_train", refuse)
    prepare(run_settings(compose(FAST)))  # hit: no training
    prepare(run_settings(compose([*FAST, "seed=1"])))  # the training seed does not touch the reference model
    for change in ("task_seed=1", "train.max_length=60", "model.hidden_size=64", "model.sft.steps=61",
                   "model.sft.n_examples=999"):
        with pytest.raises(Trained):
            prepare(run_settings(compose([*FAST, change])))


@pytest.fixture
def reference_forwards(monkeypatch):
    """The reference forward passes actually run during the test, one entry per pass (`run_reference`
    is what every reference cache calls on a miss)."""
    return count_calls(monkeypatch, reference_module, "run_reference")


@pytest.fixture
def fresh_ref_cache(shared_cache, tmp_path):
    """A cache dir with the session's SFT model and task pairs but cold reference/token caches."""
    from alignbench.bench.measurements import scratch_cache

    return scratch_cache(shared_cache, tmp_path / "fresh")


def _records_and_models(cfg):
    prepared = prepare(run_settings(cfg))
    return prepared.train_records, prepared.models


def test_second_dpo_run_does_no_reference_forward(workdir, reference_forwards):
    cfg = compose([*FAST, "method=dpo"])
    train(cfg, NullTracker())
    before = len(reference_forwards)
    result = train(compose([*FAST, "method=dpo", "method.beta=0.3", "method.lr=1e-3"]), NullTracker())
    assert len(reference_forwards) == before  # a new trial (beta, lr) with the same reference
    assert result.timings["reference_seconds"] < 5


def test_second_kto_run_does_no_reference_forward(workdir, reference_forwards):
    train(compose([*FAST, "method=kto"]), NullTracker())
    before = len(reference_forwards)
    train(compose([*FAST, "method=kto", "method.beta=0.2"]), NullTracker())
    assert len(reference_forwards) == before


def test_reference_logps_miss_on_changed_max_length_data_or_reference(workdir, fresh_ref_cache, reference_forwards):
    cfg = compose([*FAST, f"cache_dir={fresh_ref_cache}"])  # cold reference caches
    records, models = _records_and_models(cfg)
    tokenizer, t = models.tokenizer, cfg.train
    tokens = tokenize_pairs(records, tokenizer, t.max_length, t.max_prompt_length)

    count = len(reference_forwards)
    batch_size, cache_dir = cfg.eval.batch_size, cfg.cache_dir
    first = reference_pair_logps(models, tokens, batch_size, cache_dir)
    assert len(reference_forwards) == count + 1  # cold: one reference pass
    again = reference_pair_logps(models, tokens, batch_size, cache_dir)
    assert len(reference_forwards) == count + 1  # warm: none
    assert torch.equal(first["chosen"], again["chosen"])

    shorter = tokenize_pairs(records, tokenizer, 40, t.max_prompt_length)
    reference_pair_logps(models, shorter, batch_size, cache_dir)
    assert len(reference_forwards) == count + 2  # changed max length

    fewer = tokenize_pairs(records[1:], tokenizer, t.max_length, t.max_prompt_length)
    reference_pair_logps(models, fewer, batch_size, cache_dir)
    assert len(reference_forwards) == count + 3  # changed data

    other_reference = dataclasses.replace(models, key=models.key + "-other-seed")
    reference_pair_logps(other_reference, tokens, batch_size, cache_dir)
    assert len(reference_forwards) == count + 4  # changed reference model (e.g. another seed's SFT)


def test_reference_key_follows_the_seed(workdir, monkeypatch):
    """A changed task_seed gives another SFT model, hence another reference key for every reference cache."""
    lookups = []
    real = cache.cached

    def recording(cache_dir, kind, key, write):
        lookups.append((kind, key))
        return real(cache_dir, kind, key, write)

    monkeypatch.setattr(cache, "cached", recording)
    models = prepare(run_settings(compose(FAST))).models  # the session's SFT model (trained here at most once)
    seed_0_keys = list(lookups)
    assert ("sft", models.key) in seed_0_keys  # the reference key is the SFT model's cache key
    assert any(kind == "ref_logps" for kind, _ in seed_0_keys)

    def refuse(*args, **kwargs):
        raise Trained
    monkeypatch.setattr(models_module, "sft_train", refuse)
    with pytest.raises(Trained):
        prepare(run_settings(compose([*FAST, "task_seed=7"])))
    seed_7_sft = [key for kind, key in lookups[len(seed_0_keys):] if kind == "sft"]
    assert len(seed_7_sft) == 1 and seed_7_sft[0] != models.key  # another key: a cache miss, another entry


def test_tokenised_data_cache(workdir, fresh_ref_cache, monkeypatch):
    cfg = compose([*FAST, f"cache_dir={fresh_ref_cache}"])
    records, models = _records_and_models(cfg)
    calls = {"n": 0}
    real = reference_module.tokenize_pairs

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(reference_module, "tokenize_pairs", counting)
    limits, cache_dir = length_limits(cfg), cfg.cache_dir
    first = reference_module.cached_tokenize_pairs(records, models.tokenizer, models.key, limits, cache_dir)
    n = calls["n"]
    again = reference_module.cached_tokenize_pairs(records, models.tokenizer, models.key, limits, cache_dir)
    assert calls["n"] == n  # hit
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert torch.equal(first["chosen_input_ids"], real(records, models.tokenizer, cfg.train.max_length,
                                                       cfg.train.max_prompt_length)["chosen_input_ids"])
    reference_module.cached_tokenize_pairs(records, models.tokenizer, models.key,
                                           dataclasses.replace(limits, max_length=40), cache_dir)
    assert calls["n"] == n + 1  # changed max length
    reference_module.cached_tokenize_pairs(records[1:], models.tokenizer, models.key, limits, cache_dir)
    assert calls["n"] == n + 2  # changed data
    reference_module.cached_tokenize_pairs(records, models.tokenizer, models.key + "-other", limits, cache_dir)
    assert calls["n"] == n + 3  # changed model / tokenizer


def test_reference_eval_side_cached(workdir):
    prepare(run_settings(compose(FAST)))
    assert prepare(run_settings(compose(FAST))).evaluator.cache_hit is True
    assert prepare(run_settings(compose([*FAST, "eval.max_new_tokens=11"]))).evaluator.cache_hit is False
    assert prepare(run_settings(compose([*FAST, "eval.max_new_tokens=11"]))).evaluator.cache_hit is True
    assert prepare(run_settings(compose([*FAST, "eval.n_prompts=20"]))).evaluator.cache_hit is False  # other prompts


def test_reward_model_cache(workdir, reward_model_trainings):
    from alignbench.models import reward_model as reward_model

    cfg = compose([*FAST, "method=ppo", "method.reward_model.steps=5"])
    records, models = _records_and_models(cfg)
    settings = reward_model_settings(cfg)
    reward_model.load_or_train_reward_model(settings, models, records)
    before = len(reward_model_trainings)
    reward_model.load_or_train_reward_model(settings, models, records)
    assert len(reward_model_trainings) == before  # hit
    reward_model.load_or_train_reward_model(settings, models, records[1:])
    assert len(reward_model_trainings) == before + 1  # changed data
    reward_model.load_or_train_reward_model(dataclasses.replace(settings, steps=6), models, records)
    assert len(reward_model_trainings) == before + 2  # changed reward-model config


# --------------------------------------------------------------------------- a broken entry of each kind

def _truncate_every_entry(cache_dir, kind: str) -> list:
    """Cut the largest file of each `kind` entry to half (a full disk or a killed copy): returns the entries."""
    entries = [e for e in (cache_dir / kind).iterdir() if (e / cache.MARKER).exists()]
    for entry in entries:
        largest = max((p for p in entry.rglob("*") if p.is_file() and p.name != cache.MARKER),
                      key=lambda p: p.stat().st_size)
        largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
    return entries


# A cold cache in seconds: a few SFT steps on few examples, tiny evaluation and training.
TINY_CACHE_RUN = [*FAST, "model.sft.steps=4", "model.sft.n_examples=64", "data.n_train_prompts=40",
                  "eval.n_prompts=8", "eval.max_new_tokens=8", "eval.n_pref_pairs=8", "train.max_steps=2",
                  "eval.every_n_steps=0"]


def test_a_truncated_sft_model_is_warned_about_and_rebuilt(tmp_path, caplog, monkeypatch):
    """The issue's case: `model.safetensors` of the SFT cache cut short. The next load warns once,
    naming the entry, trains the SFT stage again and returns a working model."""
    import logging

    cfg = compose([*TINY_CACHE_RUN, f"cache_dir={tmp_path}"])
    examples = [(f"Review {i}:", " it was good and fun.") for i in range(32)]
    device = torch.device("cpu")
    models_module.load_builtin(load_settings(cfg), examples, "test-corpus", device)
    (entry,) = _truncate_every_entry(tmp_path, "sft")
    assert (entry / "model.safetensors").exists()
    sft_trainings = count_calls(monkeypatch, models_module, "sft_train")
    models_module._LOADED.clear()
    cache._VERIFIED.clear()
    with caplog.at_level(logging.WARNING, logger="alignbench.cache"):
        model, tokenizer, key, path = models_module.load_builtin(load_settings(cfg), examples, "test-corpus", device)
    assert path == entry and len(sft_trainings) == 1 and cache.check_entry(entry) is None
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(entry) in warning and "model.safetensors has" in warning and "were written" in warning
    ids = tokenizer("Review 3:", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()


@pytest.mark.slow  # ~6 min on a 2-core machine under load average 15 (two cold trainings)
def test_a_truncated_entry_of_every_cache_kind_is_rebuilt_and_the_run_goes_on(workdir, tmp_path, caplog,
                                                                             monkeypatch, reward_model_trainings):
    """SFT model, built-in pairs, tokens, reference log-probs, reference eval side, reward model:
    each truncated on disk, then trained on again: one warning naming each entry, each rebuilt, the
    run finishes (what used to be `SafetensorError: incomplete metadata` on every later run)."""
    import logging

    from alignbench.models import reward_model

    cache_dir = tmp_path / "cache"
    dpo = compose([*TINY_CACHE_RUN, f"cache_dir={cache_dir}"])
    ppo = compose([*TINY_CACHE_RUN, "method=ppo", "method.reward_model.steps=2", f"cache_dir={cache_dir}"])
    train(dpo, NullTracker())
    records, models = _records_and_models(dpo)
    reward_model.load_or_train_reward_model(reward_model_settings(ppo), models, records)

    kinds = ("sft", "builtin_pairs", "tokens", "ref_logps", "ref_eval", "reward_model")
    broken = {kind: _truncate_every_entry(cache_dir, kind) for kind in kinds}
    assert all(broken.values()), broken
    sft_trainings = count_calls(monkeypatch, models_module, "sft_train")
    models_module._LOADED.clear()  # a new process: the SFT model is read from disk
    cache._VERIFIED.clear()
    with caplog.at_level(logging.WARNING, logger="alignbench.cache"):
        result = train(dpo, NullTracker())
        records, models = _records_and_models(dpo)
        before = len(reward_model_trainings)
        rm = reward_model.load_or_train_reward_model(reward_model_settings(ppo), models, records)
    assert 0 <= result.metrics["eval/win_rate"] <= 1 and len(sft_trainings) == 1
    assert len(reward_model_trainings) == before + 1 and 0 <= rm.stats["rm/pair_accuracy"] <= 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "alignbench.cache"]
    for kind, entries in broken.items():
        for entry in entries:
            assert sum(str(entry) in w for w in warned) <= 1, (entry, warned)
            if entry.exists():
                assert cache.check_entry(entry) is None, entry  # rebuilt whole
        assert any(str(e) in w and "were written" in w for e in entries for w in warned), (kind, warned)
