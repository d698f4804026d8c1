"""Evaluation, the same for every method.

Policy and reference each sample one response per held-out prompt with the same decoding
and seeds; the judge scores both; win rate = P(policy preferred), ties 1/2, Wilson 95% CI.
KL(pi || pi_ref) = mean over policy samples of sum_t [log pi(y_t) - log pi_ref(y_t)], nats per
sequence (and per token): the sampled, unbiased "k1" estimator, valid at temperature 1.

The reference side (its samples, their judge scores and log-probs) is fixed for a given
reference model, prompts, decoding and judge, so it is computed once and cached on disk;
each evaluation only samples and scores the policy.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import torch

from alignbench import cache
from alignbench.data import builtin_task as task
from alignbench.models.generation import response_token_logps, sample
from alignbench.models.logps import pair_logps  # the loop's own scorer, so eval and training agree
from alignbench.evaluation.stats import win_rate_ci

log = logging.getLogger(__name__)

KL_ESTIMATOR = "k1: mean over policy samples of sum_t (log pi - log pi_ref), temperature-1 sampling"


@dataclass
class EvalResult:
    metrics: dict[str, float]
    rows: list[dict] = field(default_factory=list)  # one per prompt: the samples table


class Evaluator:
    def __init__(self, cfg, models, judge, prompts: list[str], pref_eval=None, builtin_task: bool = False):
        """`pref_eval`: optional (tokenized pairs dict, reference logps dict) for held-out pair accuracy."""
        self.cfg, self.models, self.judge, self.prompts = cfg, models, judge, list(prompts)
        self.pref_eval = pref_eval
        self.builtin_task = builtin_task
        self.method = cfg.method.name
        self.seed = cfg.seed + 10_007  # fixed across evals of a run, so curves compare like with like
        self.reference = self._reference_side()

    def _sample(self, model):
        e = self.cfg.eval
        return sample(model, self.models.tokenizer, self.prompts, max_new_tokens=e.max_new_tokens,
                      temperature=e.temperature, max_prompt_length=self.cfg.train.max_prompt_length,
                      batch_size=e.batch_size, seed=self.seed, device=self.models.device)

    def _reference_side(self) -> dict:
        e = self.cfg.eval
        key = cache.content_key("ref-eval-v1", self.models.key, self.prompts, e.max_new_tokens, e.temperature,
                                self.cfg.train.max_prompt_length, self.seed, self.judge.name,
                                self.cfg.judge.get("path"))

        def write(path):
            with self.models.reference_model() as ref:
                samples = self._sample(ref)
                logps = response_token_logps(ref, samples, e.batch_size, self.models.device).sum(-1)
            scores = self.judge.score(samples.prompts, samples.responses)
            side = {"responses": samples.responses, "scores": scores,
                    "lengths": samples.lengths.tolist(), "logps": logps.tolist()}
            if self.builtin_task:
                side["gold"] = [task.gold_reward(p, r) for p, r in zip(samples.prompts, samples.responses)]
            (path / "reference.json").write_text(json.dumps(side))

        path, hit = cache.cached(self.cfg.cache_dir, "ref_eval", key, write)
        self.cache_hit = hit
        return json.loads((path / "reference.json").read_text())

    def evaluate(self, policy) -> EvalResult:
        t0 = time.time()
        e, device = self.cfg.eval, self.models.device
        samples = self._sample(policy)
        was_training = policy.training
        policy.eval()
        policy_logps = response_token_logps(policy, samples, e.batch_size, device)
        with self.models.reference_model() as ref:
            ref_logps = response_token_logps(ref, samples, e.batch_size, device)
        policy.train(was_training)
        kl_seq = (policy_logps - ref_logps).sum(-1).cpu()
        lengths = samples.lengths.float()
        scores = self.judge.score(samples.prompts, samples.responses)

        ref_scores = self.reference["scores"]
        wins = sum(p > r for p, r in zip(scores, ref_scores))
        ties = sum(p == r for p, r in zip(scores, ref_scores))
        n = len(scores)
        rate, low, high = win_rate_ci(wins, ties, n)
        metrics = {
            "eval/win_rate": rate, "eval/win_rate_ci_low": low, "eval/win_rate_ci_high": high,
            "eval/wins": float(wins), "eval/ties": float(ties), "eval/n": float(n),
            "eval/kl": kl_seq.mean().item(),
            "eval/kl_per_token": (kl_seq.sum() / lengths.sum().clamp(min=1)).item(),
            "eval/policy_reward": sum(scores) / n,
            "eval/reference_reward": sum(ref_scores) / n,
            "eval/policy_length": lengths.mean().item(),
            "eval/reference_length": sum(self.reference["lengths"]) / n,
        }
        gold = None
        if self.builtin_task:
            gold = scores if self.judge.name == "gold" else [
                task.gold_reward(p, r) for p, r in zip(samples.prompts, samples.responses)]
            metrics["eval/gold_reward"] = sum(gold) / n
            metrics["eval/reference_gold_reward"] = sum(self.reference["gold"]) / n
        if self.pref_eval is not None:
            metrics["eval/pref_accuracy"] = self._pref_accuracy(policy)
        metrics["eval/seconds"] = time.time() - t0

        rows = []
        for i, prompt in enumerate(self.prompts):
            p, r = scores[i], ref_scores[i]
            row = {"prompt": prompt, "policy_response": samples.responses[i],
                   "reference_response": self.reference["responses"][i],
                   "policy_score": p, "reference_score": r,
                   "policy_length": int(lengths[i]), "reference_length": int(self.reference["lengths"][i]),
                   "kl": float(kl_seq[i]), "winner": "policy" if p > r else "reference" if r > p else "tie"}
            if gold is not None:
                row["policy_gold"], row["reference_gold"] = gold[i], self.reference["gold"][i]
            rows.append(row)
        return EvalResult(metrics=metrics, rows=rows)

    @torch.no_grad()
    def _pref_accuracy(self, policy) -> float:
        """Held-out pairs where the policy's implicit reward ranks chosen above rejected."""

        tokens, ref = self.pref_eval
        was_training = policy.training
        policy.eval()
        pol = pair_logps(policy, tokens, self.cfg.eval.batch_size, self.models.device, self.models.padding_free)
        policy.train(was_training)
        if self.method == "simpo":  # reference-free: its implicit reward is the average log-prob
            margin = pol["chosen"] / pol["chosen_n"] - pol["rejected"] / pol["rejected_n"]
        else:
            margin = (pol["chosen"] - ref["chosen"]) - (pol["rejected"] - ref["rejected"])
        return (margin > 0).float().mean().item()
