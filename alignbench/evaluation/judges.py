"""Judges score (prompt, response) texts; win rate compares the policy's score with the reference's.
A pairwise judge (`pairwise_judge.PairwiseJudge`) instead compares two responses to one prompt
(`compare`); `preference_outcomes` puts both kinds behind one verdict per pair.

A judge is only worth its win rates if it can tell a preferred response from a rejected one:
`judge_accuracy` measures that on held-out preference pairs (Wilson 95% CI), and the caveats say
in plain words when its win rates mean nothing or are biased towards one method."""

from __future__ import annotations

from pathlib import Path

import torch

from alignbench import cache
from alignbench.data import builtin_task as task
from alignbench.evaluation.stats import win_rate_ci
from alignbench.methods import is_online


class GoldJudge:
    """A built-in task's ground-truth reward (`data=builtin`'s unless another task's is given)."""

    name = "gold"

    def __init__(self, reward=task.gold_reward):
        self.reward = reward

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [self.reward(p, r) for p, r in zip(prompts, responses)]


class RewardModelJudge:
    """Any Hugging Face sequence-classification model (one logit = reward) on prompt + response."""

    name = "reward_model"

    def __init__(self, model, tokenizer, device, batch_size: int = 32, max_length: int = 512):
        self.model, self.tokenizer, self.device = model.eval(), tokenizer, device
        self.batch_size, self.max_length = batch_size, max_length
        self.key = None  # the saved model's identity (`saved_model_key`): in the key of every cache of its scores

    @classmethod
    def from_pretrained(cls, path: str, device, trust_remote_code: bool = False, batch_size: int = 32):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, use_safetensors=True, trust_remote_code=trust_remote_code).to(device)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
            model.config.pad_token_id = tokenizer.pad_token_id
        judge = cls(model, tokenizer, device, batch_size)
        judge.key = saved_model_key(path, model)
        return judge

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        out: list[float] = []
        texts = [p + r for p, r in zip(prompts, responses)]
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[s:s + self.batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length).to(self.device)
            out += self.model(**enc).logits[:, 0].float().cpu().tolist()
        return out


def saved_model_key(path: str, model) -> str:
    """A saved model's identity: its path, its hub commit and, for a local folder, its files' names,
    sizes and modification times (a model saved there again is another model)."""
    folder = Path(path)
    files = sorted((str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns)
                   for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else []
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)  # model=None: before loading it
    return cache.content_key("saved-model-v1", str(path), commit, files)


def preference_outcomes(judge, prompts: list[str], first: list[str], second: list[str]) -> list[float]:
    """Per pair, the judge's verdict on `first` against `second`: 1 preferred, 1/2 tie, 0 not.
    A pairwise judge (`compare`) gives it directly; a scoring judge compares its two scores."""
    if hasattr(judge, "compare"):
        return judge.compare(prompts, first, second)
    a, b = judge.score(prompts, first), judge.score(prompts, second)
    return [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)]


def judge_accuracy(judge, pairs) -> dict[str, float]:
    """How often the judge prefers `chosen` to `rejected` on held-out preference pairs, ties counted 1/2
    (and counted apart: a pairwise judge ties when its two orders disagree), with its Wilson 95% interval:
    eval/judge_accuracy, _ci_low, _ci_high, eval/judge_ties, eval/judge_n_pairs ({} without pairs)."""
    if not pairs:
        return {}
    outcomes = preference_outcomes(judge, [p.prompt for p in pairs], [p.chosen for p in pairs],
                                   [p.rejected for p in pairs])
    wins = sum(o == 1.0 for o in outcomes)
    ties = sum(o == 0.5 for o in outcomes)
    accuracy, low, high = win_rate_ci(wins, ties, len(pairs))
    return {"eval/judge_accuracy": accuracy, "eval/judge_accuracy_ci_low": low, "eval/judge_accuracy_ci_high": high,
            "eval/judge_ties": float(ties), "eval/judge_n_pairs": float(len(pairs))}


def judge_accuracy_caveat(metrics: dict) -> str | None:
    """The plain warning when the judge's held-out accuracy interval includes 0.5 (None otherwise)."""
    low, high = metrics.get("eval/judge_accuracy_ci_low"), metrics.get("eval/judge_accuracy_ci_high")
    if low is None or high is None or not low <= 0.5 <= high:
        return None
    ties = metrics.get("eval/judge_ties")
    of_them = f" ({int(ties)} of them ties)" if ties else ""
    return (f"the judge cannot tell chosen from rejected: its accuracy on {int(metrics['eval/judge_n_pairs'])} "
            f"held-out preference pairs{of_them} is {metrics['eval/judge_accuracy']:.3f} (95% CI [{low:.3f}, {high:.3f}] "
            "includes 0.5), so its win rates mean nothing")


def judge_summary(metrics: dict) -> str:
    """The judge's part of a run's one-line output: its held-out accuracy, and AT CHANCE when the caveat holds."""
    if "eval/judge_accuracy" not in metrics:
        return ""
    m = metrics
    at_chance = " AT CHANCE: its win rate means nothing" if judge_accuracy_caveat(m) else ""
    return (f" judge_accuracy={m['eval/judge_accuracy']:.3f} [{m['eval/judge_accuracy_ci_low']:.3f}, "
            f"{m['eval/judge_accuracy_ci_high']:.3f}]{at_chance}")


def judge_bias_caveat(method: str, judge_name: str, judge_path, reward: str | None) -> str | None:
    """The warning when the judge is the very reward model an online method optimised (None otherwise)."""
    if is_online(method) and judge_name == "reward_model" and str(judge_path) == "trained" and reward == "model":
        return (f"the judge is the reward model {method} trained against (judge.path=trained): its win rates are "
                f"biased in {method}'s favour")
    return None
