"""What `eval.samples_per_prompt` buys per second of evaluation, against more prompts.

Trains one policy (DPO at its defaults on the built-in task, or whatever the overrides say), then
evaluates that same policy on the test prompts under several (prompts, samples per prompt) budgets,
each repeated on several evaluation sampling seeds. Prints, per budget: the policy-side evaluation
seconds (the reference side is cached, as in a sweep), the mean width of the 95% interval, the
spread of the win rate across evaluation seeds, and the information per second, 1 / (width^2 x
seconds): higher is a better use of evaluation time.

    HF_HUB_OFFLINE=1 .venv/bin/python tools/eval_samples_tradeoff.py [hydra overrides]

Numbers depend on the machine; compare the rows of one run with each other."""

from __future__ import annotations

import dataclasses
import statistics
import sys

from alignbench.config import compose
from alignbench.evaluation.evaluator import Evaluator
from alignbench.tracking.null import NullTracker
from alignbench.training.offline import offline_loop
from alignbench.training.settings import run_settings
from alignbench.training.setup import prepare

BUDGETS = [(16, 4), (32, 1), (32, 2), (64, 1), (64, 2), (64, 4)]  # (prompts, samples per prompt)
EVAL_SEEDS = range(3)


def evaluate_budget(prepared, policy, n_prompts: int, samples_per_prompt: int, eval_seed: int) -> dict:
    ev = prepared.evaluator
    # Another sampling seed per repeat: the spread across repeats is the evaluation's own noise.
    budget = dataclasses.replace(ev.settings, samples_per_prompt=samples_per_prompt,
                                 seed=ev.settings.seed + 1_000 * eval_seed)
    evaluator = Evaluator(budget, prepared.models, ev.judge, prepared.eval_prompts[:n_prompts],
                          builtin_task=prepared.builtin_task, gold_reward=ev.gold_reward)
    m = evaluator.evaluate(policy).metrics
    return {"win_rate": m["eval/win_rate"], "width": m["eval/win_rate_ci_high"] - m["eval/win_rate_ci_low"],
            "seconds": m["eval/seconds"]}


def main(overrides: list[str]) -> None:
    cfg = compose(["eval.split=test", "eval.every_n_steps=0", *overrides])
    settings = run_settings(cfg)
    prepared = prepare(settings)
    offline_loop(settings, prepared, NullTracker())
    policy = prepared.models.policy
    print(f"policy: method={cfg.method.name}, {len(prepared.eval_prompts)} test prompts, "
          f"{cfg.eval.max_new_tokens} new tokens per response")
    print(f"{'prompts':>7} {'samples':>7} {'pairs':>5} {'eval s':>7} {'CI width':>8} {'sd(win)':>7} {'1/(w^2 s)':>9}")
    for n_prompts, s in BUDGETS:
        runs = [evaluate_budget(prepared, policy, n_prompts, s, k) for k in EVAL_SEEDS]
        seconds = statistics.mean(r["seconds"] for r in runs)
        width = statistics.mean(r["width"] for r in runs)
        spread = statistics.stdev(r["win_rate"] for r in runs)
        print(f"{n_prompts:>7} {s:>7} {n_prompts * s:>5} {seconds:>7.2f} {width:>8.3f} {spread:>7.3f} "
              f"{1 / (width ** 2 * seconds):>9.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
