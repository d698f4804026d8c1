"""The stages below training/ run from plain objects: no composed config, no SFT stage. A tiny model
built from `TinySizes`, a `Models` record, a reward model trained from `RewardModelSettings` and an
`Evaluator` from `EvalSettings`, each checked on values."""

from __future__ import annotations

import copy

import pytest
import torch

from alignbench.data.records import PreferenceRecord
from alignbench.evaluation.evaluator import EvalSettings, Evaluator
from alignbench.models.builtin import build_tiny_model
from alignbench.models.loading import Models
from alignbench.models.reward_model import RewardModelSettings, load_or_train_reward_model
from alignbench.models.settings import TinySizes
from helpers import make_tiny_tokenizer

SIZES = TinySizes(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, context_length=128)


@pytest.fixture(scope="module")
def plain_models() -> Models:
    tokenizer = make_tiny_tokenizer(SIZES.vocab_size)
    policy = build_tiny_model(SIZES, tokenizer, seed=0)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    return Models(policy=policy, reference=reference, tokenizer=tokenizer, key="plain-tiny", device=torch.device("cpu"))


PAIRS = [PreferenceRecord(f"Human: Tell me about book {i}.\nAssistant:", " I liked the film, the story was fun.",
                          " The food was bad and the service was slow.") for i in range(24)]


def test_a_reward_model_and_an_evaluator_from_plain_settings(plain_models, tmp_path):
    assert plain_models.policy.config.max_position_embeddings == 128  # the sizes went in
    assert plain_models.policy.config.hidden_size == 32 and plain_models.policy.config.num_hidden_layers == 1
    rm_settings = RewardModelSettings(steps=30, lr=3e-3, batch_size=8, heldout_fraction=0.25, max_length=48,
                                      max_prompt_length=24, adam_betas=(0.9, 0.999), weight_decay=0.0,
                                      max_grad_norm=1.0, seed=0, score_batch_size=8, cache_dir=str(tmp_path))
    rm = load_or_train_reward_model(rm_settings, plain_models, PAIRS)
    assert rm.stats["rm/n_heldout_pairs"] == 6  # a quarter of 24 pairs
    chosen = rm.score([p.prompt for p in PAIRS], [p.chosen for p in PAIRS])
    rejected = rm.score([p.prompt for p in PAIRS], [p.rejected for p in PAIRS])
    assert sum(c > r for c, r in zip(chosen, rejected)) == len(PAIRS)  # one reply always preferred: learnt
    assert len(list((tmp_path / "reward_model").iterdir())) == 1  # cached under the settings' cache_dir

    settings = EvalSettings(max_new_tokens=6, temperature=1.0, batch_size=4, max_prompt_length=24,
                            samples_per_prompt=2, seed=5, judge_path="trained", implicit_reward=None,
                            cache_dir=str(tmp_path))
    prompts = [p.prompt for p in PAIRS[:3]]
    evaluator = Evaluator(settings, plain_models, rm, prompts, held_out_pairs=PAIRS[:4])  # the trained RM judges
    assert evaluator.judge_metrics["eval/judge_accuracy"] == 1.0  # the judge ranks each held-out pair right
    with plain_models.reference_model() as ref:
        m = evaluator.evaluate(ref).metrics  # the reference against itself, same seed: the same samples
    assert (m["eval/n"], m["eval/n_prompts"], m["eval/ties"], m["eval/win_rate"], m["eval/kl"]) == (6, 3, 6, 0.5, 0.0)
