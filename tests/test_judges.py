"""Judges: the built-in task's gold reward, and a local sequence-classification reward model."""

from __future__ import annotations

import pytest
import torch

from alignbench.data import builtin_task as task
from alignbench.evaluation.judges import GoldJudge, RewardModelJudge
from alignbench.models.loading import train_tokenizer
from conftest import _SENTENCES

PROMPTS = task.make_prompts(5, seed=0)
RESPONSES = ["I loved it, the story was great and fun.", "", "bad bad bad", "The weather is sunny and warm today.",
             "A long and lovely answer with a happy ending, " * 3]


def test_gold_judge_scores_are_the_gold_reward():
    scores = GoldJudge().score(PROMPTS, RESPONSES)
    assert GoldJudge.name == "gold"
    assert scores == [task.gold_reward(p, r) for p, r in zip(PROMPTS, RESPONSES)]
    assert len(set(scores)) > 1  # the texts differ, so do their rewards


@pytest.fixture
def saved_reward_model(tmp_path):
    """A tiny Llama sequence classifier (one logit) + the project's tokenizer, saved as safetensors."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = train_tokenizer(_SENTENCES * 4, 300)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    path = tmp_path / "tiny-reward-model"
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    assert list(path.glob("*.safetensors"))
    return path, model, tokenizer


def test_reward_model_judge_scores_are_the_models_logits(saved_reward_model):
    path, model, tokenizer = saved_reward_model
    judge = RewardModelJudge.from_pretrained(str(path), torch.device("cpu"), batch_size=2)
    assert judge.name == "reward_model"
    scores = judge.score(PROMPTS, RESPONSES)
    assert len(scores) == len(PROMPTS)
    # Each text alone (no padding) through the model saved above: the judge's padded batches agree.
    with torch.no_grad():
        expected = [model(**tokenizer(p + r, return_tensors="pt")).logits[0, 0].item()
                    for p, r in zip(PROMPTS, RESPONSES)]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert len(set(round(s, 6) for s in scores)) > 1  # a constant judge would pass the above only by luck
