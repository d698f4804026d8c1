"""Judges: the built-in task's gold reward, and a local sequence-classification reward model."""

from __future__ import annotations

import pytest
import torch

from alignbench.data import builtin_task as task
from alignbench.data.records import PreferenceRecord
from alignbench.evaluation.judges import (GoldJudge, RewardModelJudge, judge_accuracy, judge_accuracy_caveat,
                                          judge_bias_caveat)
from alignbench.models.loading import train_tokenizer
from helpers import SENTENCES

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

    tokenizer = train_tokenizer(SENTENCES * 4, 300)
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


class ConstantJudge:
    name = "constant"

    def score(self, prompts, responses):
        return [0.0] * len(prompts)


class LengthJudge:
    name = "length"

    def score(self, prompts, responses):
        return [float(len(r)) for r in responses]


PAIRS = [PreferenceRecord(p, chosen="a long and lovely answer", rejected="bad") for p in PROMPTS * 4]  # 20 pairs


def test_judge_accuracy_with_its_wilson_interval_and_the_plain_warning():
    from alignbench.evaluation.stats import win_rate_ci

    sure = judge_accuracy(LengthJudge(), PAIRS)
    assert sure == {"eval/judge_accuracy": 1.0, "eval/judge_accuracy_ci_low": pytest.approx(win_rate_ci(20, 0, 20)[1]),
                    "eval/judge_accuracy_ci_high": 1.0, "eval/judge_ties": 0.0, "eval/judge_n_pairs": 20.0}
    assert sure["eval/judge_accuracy_ci_low"] > 0.5 and judge_accuracy_caveat(sure) is None
    blind = judge_accuracy(ConstantJudge(), PAIRS)  # every pair a tie: 1/2
    assert blind["eval/judge_accuracy"] == 0.5 and blind["eval/judge_accuracy_ci_low"] < 0.5
    assert judge_accuracy_caveat(blind) == (
        "the judge cannot tell chosen from rejected: its accuracy on 20 held-out preference pairs (20 of them ties) "
        "is 0.500 "
        f"(95% CI [{blind['eval/judge_accuracy_ci_low']:.3f}, {blind['eval/judge_accuracy_ci_high']:.3f}] "
        "includes 0.5), so its win rates mean nothing")
    assert judge_accuracy(ConstantJudge(), []) == {} and judge_accuracy_caveat({}) is None


def test_the_reward_model_ppo_trained_against_is_called_biased():
    assert "biased in ppo's favour" in judge_bias_caveat("ppo", "reward_model", "trained", "model")
    assert "biased in rloo's favour" in judge_bias_caveat("rloo", "reward_model", "trained", "model")
    assert judge_bias_caveat("dpo", "reward_model", "trained", None) is None
    assert judge_bias_caveat("ppo", "reward_model", "/some/dir", "model") is None   # an independent judge
    assert judge_bias_caveat("ppo", "reward_model", "trained", "gold") is None      # PPO-GT did not see it
    assert judge_bias_caveat("ppo", "gold", None, "model") is None


def test_a_local_reward_model_judges_a_run_end_to_end(workdir, saved_reward_model):
    from alignbench.config import compose
    from alignbench.tracking.null import NullTracker
    from alignbench.training.run import train
    from helpers import FAST

    path = saved_reward_model[0]
    tracker = NullTracker()
    result = train(compose([*FAST, "judge=reward_model", f"judge.path={path}"]), tracker)
    m, rows = result.metrics, result.rows
    judge = RewardModelJudge.from_pretrained(str(path), torch.device("cpu"))
    assert [r["policy_score"] for r in rows] == pytest.approx(
        judge.score([r["prompt"] for r in rows], [r["policy_response"] for r in rows]), abs=1e-5)
    assert [r["reference_score"] for r in rows] == pytest.approx(
        judge.score([r["prompt"] for r in rows], [r["reference_response"] for r in rows]), abs=1e-5)
    assert m["eval/judge_n_pairs"] == 16
    assert 0 <= m["eval/judge_accuracy_ci_low"] <= m["eval/judge_accuracy"] <= m["eval/judge_accuracy_ci_high"] <= 1
    assert tracker.params["judge.path"] == str(path) and tracker.params["judge.name"] == "reward_model"
    # an untrained classifier on 16 pairs: the run says so exactly when its interval includes 0.5
    assert tracker.tags.get("judge.warning") == judge_accuracy_caveat(m)
    assert "policy/model.safetensors" in tracker.artifacts


def test_the_report_warns_about_a_blind_judge_and_a_biased_one():
    import pandas as pd

    from alignbench.report.analysis import judge_caveats

    blind = judge_accuracy(ConstantJudge(), PAIRS)
    trials = pd.DataFrame([{"method": "ppo", "params.judge.name": "reward_model", "params.judge.path": "trained",
                            "params.method.reward": "model", **{f"metrics.{k}": v for k, v in blind.items()}},
                           {"method": "dpo", "params.judge.name": "reward_model", "params.judge.path": "trained"}])
    assert judge_caveats(trials) == [f"Warning: {judge_accuracy_caveat(blind)}.",
                                     f"Warning: {judge_bias_caveat('ppo', 'reward_model', 'trained', 'model')}."]
    sure = {f"metrics.{k}": v for k, v in judge_accuracy(LengthJudge(), PAIRS).items()}
    assert judge_caveats(pd.DataFrame([{"method": "dpo", "params.judge.name": "gold", **sure}])) == []


def test_the_length_caveat_is_the_builtin_gold_judges_only():
    from alignbench.report.analysis import length_control_caveat

    assert "peaks at the target length" in length_control_caveat(["gold"], ["builtin"])
    assert length_control_caveat(["gold"], ["sentiment"]) is None  # VADER's gold has no length peak
    assert length_control_caveat(["reward_model"], ["builtin"]) is None
