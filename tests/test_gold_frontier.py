"""The report's reward-KL frontier (report/gold_frontier.py): PPO split by its reward (PPO-GT apart),
each variant's frontier as the best gold reward at or below each KL, and the sentence naming the
leader where, on hand-made trials whose answer is worked out below; then drawn in a report of a
fabricated sweep."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from alignbench.report.gold_frontier import frontier_points, gold_frontier_figure, leader_sentence, leaders


def _trials(rows):
    return pd.DataFrame([{"method": m, "state": state, "params.method.reward": reward,
                          "metrics.eval/kl": kl, "metrics.eval/gold_reward": gold}
                         for m, reward, kl, gold, state in rows])


# dpo leads from 1.5 (where every variant has a point) to 2.5; ppo-gt's 0.65 at KL 2.5 beats dpo's 0.6;
# the learned-reward PPO's 0.7 at KL 3.0 is the best at the far end. The pruned and NaN rows are left out.
TRIALS = _trials([
    ("dpo", None, 0.5, 0.2, "COMPLETE"), ("dpo", None, 1.0, 0.5, "COMPLETE"), ("dpo", None, 2.0, 0.6, "COMPLETE"),
    ("ppo", "model", 0.8, 0.1, "COMPLETE"), ("ppo", "model", 3.0, 0.7, "COMPLETE"),
    ("ppo", "gold", 1.5, 0.3, "COMPLETE"), ("ppo", "gold", 2.5, 0.65, "COMPLETE"),
    ("ppo", "gold", 0.1, 0.99, "PRUNED"), ("dpo", None, float("nan"), 0.9, "COMPLETE"),
])


def test_points_are_complete_runs_with_ppo_split_by_its_reward():
    points = frontier_points(TRIALS)
    assert points["variant"].value_counts().to_dict() == {"dpo": 3, "ppo (reward model)": 2, "ppo-gt": 2}
    assert points["gold"].max() == 0.7  # the pruned 0.99 is not a point


def test_the_leader_changes_where_worked_out_by_hand():
    assert leaders(frontier_points(TRIALS)) == [("dpo", 1.5, 2.5), ("ppo-gt", 2.5, 3.0), ("ppo (reward model)", 3.0, 3.0)]
    assert leader_sentence(frontier_points(TRIALS)) == (
        "The frontier ahead (highest gold reward reached at or below each KL) changes with KL: "
        "dpo for KL 1.50-2.50; ppo-gt for KL 2.50-3.00; ppo (reward model) at KL 3.00 nats/seq.")


def test_one_leader_everywhere_and_too_few_variants():
    one = _trials([("dpo", None, 0.5, 0.6, "COMPLETE"), ("dpo", None, 2.0, 0.8, "COMPLETE"),
                   ("ppo", "gold", 1.0, 0.2, "COMPLETE"), ("ppo", "gold", 3.0, 0.5, "COMPLETE")])
    assert leader_sentence(frontier_points(one)) == (
        "dpo's frontier is ahead over the whole KL range every variant reaches (1.00 to 3.00 nats/seq): at every "
        "KL there, its best run has the highest gold reward.")
    only_dpo = frontier_points(one[one["method"] == "dpo"])
    assert leader_sentence(only_dpo).startswith("Fewer than two variants")
    assert leaders(only_dpo) == []


def test_the_figure_is_saved_with_the_sentence_in_its_caption(tmp_path):
    figure, sentence = gold_frontier_figure(TRIALS, tmp_path)
    assert figure.path == tmp_path / "gold_frontier.png" and figure.path.stat().st_size > 1000
    assert figure.caption.endswith(sentence) and figure.data_uri.startswith("data:image/png;base64,")
    assert gold_frontier_figure(TRIALS[TRIALS["method"] == "dpo"], tmp_path / "none") == (
        None, leader_sentence(frontier_points(TRIALS[TRIALS["method"] == "dpo"])))
    assert not (tmp_path / "none").exists()
    assert math.isnan(TRIALS["metrics.eval/kl"].iloc[-1])


@pytest.mark.slow
def test_a_toy_real_frontier_sweep_on_the_tiny_model_reports_the_frontier_and_its_leader(workdir):
    """sweep=real_frontier's grids at toy size on the built-in tiny model (data=sentiment): DPO at two
    betas, PPO with the learned reward and PPO-GT at one KL coefficient; the report draws the frontier."""
    import json

    from omegaconf import OmegaConf

    from alignbench.config import compose
    from alignbench.report.build import build_report
    from alignbench.sweep import run as run_mod
    from helpers import TINY_SENTIMENT

    user = [o for o in TINY_SENTIMENT if o != "data=sentiment"]
    cfg = compose(["sweep=real_frontier", "sweep.n_trials=2", "sweep.n_workers=1", *user])
    cfg.sweep.overrides = ["data=sentiment", "eval.every_n_steps=0"]  # the tiny model, not SmolLM2
    cfg.sweep.search_space = {"dpo": {"method.beta": {"choices": [0.1, 1.0]}},
                              "ppo": {"method.kl_coef": {"choices": [0.05]}, "method.reward": {"choices": ["model", "gold"]}}}
    cfg.sweep.method_overrides = {"ppo": ["method.reward_model.steps=4", "method.rollout_batch_size=8"]}
    run_mod.run_sweep(cfg, overrides=user, live=False)
    out = build_report(OmegaConf.create({"tracking": {"uri": None}, "seed": 0,
                                         "report": {"sweep": "sweep-real_frontier", "out_dir": "reports"}}))
    assert (out / "figures" / "gold_frontier.png").stat().st_size > 1000
    md = (out / "report.md").read_text()
    sentence = next(line for line in md.splitlines() if "frontier" in line and ("ahead" in line))
    assert any(v in sentence for v in ("dpo", "ppo-gt", "ppo (reward model)")), sentence
    runs = json.loads((out / "summary.json").read_text())
    assert runs
