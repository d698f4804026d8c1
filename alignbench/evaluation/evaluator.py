"""Evaluation, the same for every method.

Policy and reference each sample `eval.samples_per_prompt` responses per held-out prompt (the
distinct prompts of `eval.split`) with the same decoding and seeds; the judge scores both; win
rate = P(policy preferred) over all pairs, ties 1/2 (a pairwise judge compares each policy sample
with the reference's sample of the same prompt and seed), with a Wilson 95% CI whose sample size is
divided by the design effect of clustering by prompt (`clustered_win_rate_ci`; with one sample
per prompt it is the plain Wilson interval). KL(pi || pi_ref) = mean over policy samples of sum_t [log pi(y_t) - log pi_ref(y_t)], nats per
sequence (and per token): the sampled, unbiased "k1" estimator, valid at temperature 1.

The reference side (its samples, their judge scores and log-probs) is fixed for a given
reference model, prompts, decoding and judge, so it is computed once and cached on disk;
each evaluation only samples and scores the policy. The sampling seed comes from `task_seed`,
so every run of a sweep (any training `seed`) is judged against the same reference samples.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from alignbench import cache
from alignbench.data import builtin_task as task
from alignbench.models.generation import response_token_logps, sample
from alignbench.models.pairs import pair_logps  # the loop's own scorer, so eval and training agree
from alignbench.evaluation.judges import judge_accuracy, preference_outcomes
from alignbench.evaluation.stats import win_rate_ci

log = logging.getLogger(__name__)

KL_ESTIMATOR = "k1: mean over policy samples of sum_t (log pi - log pi_ref), temperature-1 sampling"


def win_rate_ci_method(samples_per_prompt: int) -> str:
    """The `eval.win_rate_ci` param: how the win-rate interval is computed."""
    if samples_per_prompt == 1:
        return "wilson95, ties count 1/2"
    return ("wilson95 on n_eff = n / design effect of clustering by prompt "
            "(cluster-robust over iid variance of the mean, at least 1), ties count 1/2")


def clustered_win_rate_ci(outcomes: list[list[float]]) -> tuple[float, float, float]:
    """(win rate, low, high) from per-prompt outcomes (1 win, 1/2 tie, 0 loss; one list per prompt).

    Samples of one prompt are correlated, so the n pairs carry less information than n
    independent ones: the Wilson interval is taken at n_eff = n / deff, where deff (Kish's
    design effect) is the variance of the mean over prompt means (the cluster-robust one)
    divided by its iid variance, never below 1. With one sample per prompt deff = 1: plain Wilson."""
    flat = [x for prompt in outcomes for x in prompt]
    n, n_prompts = len(flat), len(outcomes)
    if n == 0:
        return win_rate_ci(0, 0, 0)
    mean = sum(flat) / n
    deff = 1.0
    if n_prompts < 2:
        deff = float(n)  # one prompt: one effective observation
    elif n > n_prompts:
        prompt_means = [sum(p) / len(p) for p in outcomes]
        # Both without the small-sample correction (CR0 / plug-in), so that perfectly clustered
        # outcomes give deff = samples per prompt and independent ones deff ~ 1.
        var_clustered = sum((m - mean) ** 2 for m in prompt_means) / n_prompts ** 2
        var_iid = sum((x - mean) ** 2 for x in flat) / n ** 2
        deff = max(1.0, var_clustered / var_iid) if var_iid > 0 else 1.0
    n_eff = n / deff
    _, low, high = win_rate_ci(mean * n_eff, 0.0, n_eff)
    return mean, low, high


@dataclass(frozen=True)
class EvalSettings:
    """How a run evaluates, built once from the config (`training.settings.eval_settings`)."""

    max_new_tokens: int       # sampling budget per response
    temperature: float        # 1.0: the sampled KL estimate is only valid there
    batch_size: int           # prompts per generation batch (and pairs per log-prob batch)
    max_prompt_length: int    # prompts are cut from the left to this many tokens
    samples_per_prompt: int   # responses sampled per prompt
    seed: int                 # the sampling seed: from task_seed, the same for every training seed
    judge_path: str | None = None  # the judge's model (part of the reference side's identity)
    implicit_reward: Callable | None = None  # the method's, behind eval/pref_accuracy (None: not logged)
    cache_dir: str | None = None


@dataclass
class EvalResult:
    metrics: dict[str, float]
    rows: list[dict] = field(default_factory=list)  # one per (prompt, sample): the samples table


class Evaluator:
    def __init__(self, settings: EvalSettings, models, judge, prompts: list[str], pref_eval=None,
                 builtin_task: bool = False, prompts_seen_in_training: int = 0, held_out_pairs=None,
                 gold_reward: Callable | None = None):
        """`prompts`: the distinct held-out prompts; `pref_eval`: optional (tokenized pairs dict,
        reference logps dict) for held-out pair accuracy; `prompts_seen_in_training`: the held-out
        prompts also trained on (0 for any split alignbench makes), logged once per run (`constant_metrics`);
        `held_out_pairs`: the held-out preference records the judge's own accuracy is measured on;
        `gold_reward`: the task's gold reward (prompt, response) -> float (`data=builtin`'s if None)."""
        self.settings, self.models, self.judge, self.prompts = settings, models, judge, list(prompts)
        self.samples_per_prompt = settings.samples_per_prompt
        # Prompt-major: the samples of prompt i are rows i*S .. i*S + S-1.
        self.sample_prompts = [p for p in self.prompts for _ in range(self.samples_per_prompt)]
        self.pref_eval = pref_eval
        self.builtin_task = builtin_task
        self.gold_reward = gold_reward or task.gold_reward
        self.prompts_seen_in_training = prompts_seen_in_training
        self.implicit_reward = settings.implicit_reward  # behind eval/pref_accuracy
        self.seed = settings.seed
        self.pairwise = hasattr(judge, "compare")
        self.reference = self._reference_side()
        self.judge_metrics = self._judge_accuracy(list(held_out_pairs or []))  # fixed for the run: scored once
        self.constant_metrics = self._constant_metrics()

    def _constant_metrics(self) -> dict[str, float]:
        """The figures every evaluation of a run shares, known before the first one: the judge's
        held-out accuracy and its interval, the reference side (its length, gold reward and, for a
        pointwise judge, its score; a pairwise judge's reference score is 1 minus each verdict, so
        it moves) and the counts. A run logs them once; `evaluate` returns them with the rest."""
        n = len(self.sample_prompts)
        metrics = {"eval/n": float(n), "eval/n_prompts": float(len(self.prompts)),
                   "eval/reference_length": sum(self.reference["lengths"]) / n,
                   "eval/prompts_seen_in_training": float(self.prompts_seen_in_training)}
        if not self.pairwise:
            metrics["eval/reference_reward"] = sum(self.reference["scores"]) / n
        if self.builtin_task:
            metrics["eval/reference_gold_reward"] = sum(self.reference["gold"]) / n
        return metrics | self.judge_metrics

    def _judge_accuracy(self, pairs) -> dict[str, float]:
        """The judge's held-out accuracy, cached under the judge's identity and the pairs' text when the
        judge has one (a saved model: an LLM judge takes minutes on CPU, and every trial of a sweep asks)."""
        judge_key = getattr(self.judge, "key", None)
        if judge_key is None or not pairs:
            return judge_accuracy(self.judge, pairs)
        key = cache.content_key("judge-accuracy-v1", self.judge.name, judge_key, cache.records_digest(pairs))

        def write(path):
            (path / "judge_accuracy.json").write_text(json.dumps(judge_accuracy(self.judge, pairs)))

        metrics, _, _ = cache.load_cached(self.settings.cache_dir, "judge_accuracy", key, write,
                                          lambda path: json.loads((path / "judge_accuracy.json").read_text()))
        return metrics

    def _sample(self, model):
        e = self.settings
        return sample(model, self.models.tokenizer, self.sample_prompts, max_new_tokens=e.max_new_tokens,
                      temperature=e.temperature, max_prompt_length=e.max_prompt_length,
                      batch_size=e.batch_size, seed=self.seed, device=self.models.device)

    def _reference_side(self) -> dict:
        e = self.settings
        key = cache.content_key("ref-eval-v3", self.models.key, self.sample_prompts, e.max_new_tokens, e.temperature,
                                e.max_prompt_length, self.seed, self.judge.name,
                                e.judge_path, getattr(self.judge, "key", None))  # which reward model

        def write(path):
            with self.models.reference_model() as ref:
                samples = self._sample(ref)
                logps = response_token_logps(ref, samples, e.batch_size, self.models.device).sum(-1)
            # A pairwise judge has no score of a response alone: it compares each policy sample with this one.
            scores = None if self.pairwise else self.judge.score(samples.prompts, samples.responses)
            side = {"responses": samples.responses, "scores": scores,
                    "lengths": samples.lengths.tolist(), "logps": logps.tolist()}
            if self.builtin_task:
                side["gold"] = [self.gold_reward(p, r) for p, r in zip(samples.prompts, samples.responses)]
            (path / "reference.json").write_text(json.dumps(side))

        side, _, self.cache_hit = cache.load_cached(self.settings.cache_dir, "ref_eval", key, write,
                                                    lambda path: json.loads((path / "reference.json").read_text()))
        return side

    def evaluate(self, policy) -> EvalResult:
        t0 = time.time()
        samples = self._sample(policy)
        kl_seq = self._sampled_kl(policy, samples)
        lengths = samples.lengths.float()
        scores, ref_scores = self._judge_scores(samples)
        n = len(scores)
        metrics = self._win_rate_metrics(scores, ref_scores)
        metrics.update({
            "eval/kl": kl_seq.mean().item(),
            "eval/kl_per_token": (kl_seq.sum() / lengths.sum().clamp(min=1)).item(),
            "eval/policy_reward": sum(scores) / n,
            "eval/reference_reward": sum(ref_scores) / n,
            "eval/policy_length": lengths.mean().item(),
        })
        gold = None
        if self.builtin_task:
            gold = scores if self.judge.name == "gold" else [
                self.gold_reward(p, r) for p, r in zip(samples.prompts, samples.responses)]
            metrics["eval/gold_reward"] = sum(gold) / n
        metrics.update(self.constant_metrics)
        if self.pref_eval is not None and self.implicit_reward is not None:
            metrics["eval/pref_accuracy"] = self._pref_accuracy(policy)
        metrics["eval/seconds"] = time.time() - t0
        return EvalResult(metrics=metrics, rows=self._rows(samples, scores, ref_scores, lengths, kl_seq, gold))

    def _judge_scores(self, samples) -> tuple[list[float], list[float]]:
        """(policy scores, reference scores) of the policy's samples and the reference's. A pairwise
        judge's policy score is its verdict (1 win, 1/2 tie, 0 loss) and the reference's is 1 minus it,
        so every comparison of scores below reads the verdict."""
        if not self.pairwise:
            return self.judge.score(samples.prompts, samples.responses), self.reference["scores"]
        verdicts = preference_outcomes(self.judge, samples.prompts, samples.responses, self.reference["responses"])
        return verdicts, [1.0 - v for v in verdicts]

    @torch.no_grad()
    def _sampled_kl(self, policy, samples) -> torch.Tensor:
        """Per-sample sum_t (log pi - log pi_ref) over the policy's own samples, on the CPU."""
        e, device = self.settings, self.models.device
        was_training = policy.training
        policy.eval()
        policy_logps = response_token_logps(policy, samples, e.batch_size, device)
        with self.models.reference_model() as ref:
            ref_logps = response_token_logps(ref, samples, e.batch_size, device)
        policy.train(was_training)
        return (policy_logps - ref_logps).sum(-1).cpu()

    def _win_rate_metrics(self, scores: list[float], ref_scores: list[float]) -> dict[str, float]:
        """Win rate over all (policy, reference) pairs, its interval clustered by prompt, the counts."""
        outcomes = [1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(scores, ref_scores)]
        s = self.samples_per_prompt
        rate, low, high = clustered_win_rate_ci([outcomes[i:i + s] for i in range(0, len(outcomes), s)])
        wins = sum(o == 1.0 for o in outcomes)
        ties = sum(o == 0.5 for o in outcomes)
        return {"eval/win_rate": rate, "eval/win_rate_ci_low": low, "eval/win_rate_ci_high": high,
                "eval/wins": float(wins), "eval/ties": float(ties)}

    def _rows(self, samples, scores, ref_scores, lengths, kl_seq, gold) -> list[dict]:
        """The samples table: one row per (prompt, sample), prompt-major."""
        ref, s = self.reference, self.samples_per_prompt
        rows = []
        for i, prompt in enumerate(self.sample_prompts):
            p, r = scores[i], ref_scores[i]
            row = {"prompt": prompt, "prompt_index": i // s, "sample_index": i % s,
                   "policy_response": samples.responses[i], "reference_response": ref["responses"][i],
                   "policy_score": p, "reference_score": r,
                   "policy_length": int(lengths[i]), "reference_length": int(ref["lengths"][i]),
                   "kl": float(kl_seq[i]), "winner": "policy" if p > r else "reference" if r > p else "tie"}
            if gold is not None:
                row["policy_gold"], row["reference_gold"] = gold[i], ref["gold"][i]
            rows.append(row)
        return rows

    @torch.no_grad()
    def _pref_accuracy(self, policy) -> float:
        """Held-out pairs where the policy's implicit reward (the method's, `alignbench.methods`) ranks
        chosen above rejected."""

        tokens, ref = self.pref_eval
        was_training = policy.training
        policy.eval()
        pol = pair_logps(policy, tokens, self.settings.batch_size, self.models.device, self.models.padding_free,
                         self.models.share_prompt)
        policy.train(was_training)
        reward = self.implicit_reward
        margin = (reward(pol["chosen"], ref["chosen"], pol["chosen_n"])
                  - reward(pol["rejected"], ref["rejected"], pol["rejected_n"]))
        return (margin > 0).float().mean().item()
