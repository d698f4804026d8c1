"""The table of methods (alignbench/methods.py): a method is one row, one loss, one method config and
one search space. A toy method added exactly that way composes, validates, has a search space
and trains; and the table's rows say what the code does with each of the six methods."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from alignbench import composition, config, methods
from alignbench.config import ConfigError, compose, validate
from alignbench.losses.common import LossOutput
from alignbench.methods import METHODS, Method
from alignbench.tracking.null import NullTracker
from helpers import FAST

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- the toy method, as a user adds one

def toy_hinge_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                   beta: float) -> LossOutput:
    """The loss file (alignbench/losses/toy.py): SLiC's hinge on the log-ratio margin, max(0, 1 - beta * h)."""
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    return LossOutput(F.relu(1.0 - beta * (chosen - rejected)), beta * chosen.detach(), beta * rejected.detach())


def check_toy(cfg):
    return None if cfg.method.beta > 0 else f"method.beta={cfg.method.beta}: must be > 0"


TOY_CONFIG = "name: toy\nbeta: 0.5\nlr: 5.0e-4\n"
TOY_SPACE = "method.beta: {low: 0.1, high: 2.0, log: true}\nmethod.lr: {low: 1.7e-4, high: 1.5e-3, log: true}\n"


@pytest.fixture
def toy_method(tmp_path, monkeypatch):
    """The row, the loss (above), conf/method/toy.yaml and conf/search_space/toy.yaml — nothing else.
    The objective is counted, so the test sees the loop really trained on it."""
    from alignbench.sweep import plan

    conf = tmp_path / "conf"
    shutil.copytree(config.CONF_DIR, conf)
    (conf / "method" / "toy.yaml").write_text(TOY_CONFIG)
    (conf / "search_space" / "toy.yaml").write_text(TOY_SPACE)
    monkeypatch.setattr(composition, "CONF_DIR", conf)  # where `compose` reads conf/
    monkeypatch.setattr(plan, "CONF_DIR", conf)
    calls = []

    def toy_objective(m):
        def pair_loss(pc, pr, nc, nr, ref):
            calls.append(pc.shape[0])
            return toy_hinge_loss(pc, pr, ref["chosen"], ref["rejected"], beta=m.beta)
        return pair_loss

    monkeypatch.setitem(METHODS, "toy", Method("offline", uses_reference=True, objective=toy_objective,
                                               implicit_reward=None, check=check_toy))
    return calls


def test_toy_loss_is_the_hinge():
    out = toy_hinge_loss(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0]), torch.zeros(2), torch.zeros(2),
                         beta=0.5)
    assert out.losses.tolist() == [0.5, 2.0]  # margins 1 and -2: 1 - 0.5 * 1, 1 + 0.5 * 2


def test_a_toy_method_added_as_one_row_validates_and_has_a_search_space(toy_method):
    from alignbench.sweep.plan import load_space

    cfg = compose(["method=toy"])
    validate(cfg)
    assert cfg.method.beta == 0.5
    with pytest.raises(ConfigError, match=r"^method\.beta=0: must be > 0$"):
        validate(compose(["method=toy", "method.beta=0"]))
    assert sorted(load_space("toy")) == ["method.beta", "method.lr"]
    validate(compose(["method=toy", "train.checkpoint_every=2"]))  # an offline row may checkpoint


def test_a_toy_method_added_as_one_row_is_a_choice_everywhere_and_a_sweep_plans_it(toy_method):
    """Nothing but the row, the loss and the two YAML files: the CLI offers it, the schemas let its
    config through untyped, and a sweep over it plans, searches its space and validates its trials."""
    from alignbench.sweep.plan import plan_sweep

    assert "toy" in config.group_options("method")
    config.check_overrides(["method=toy"])  # a known choice now
    with pytest.raises(ConfigError, match=r"unknown method \(choose from dpo, ipo, kto, ppo, rloo, simpo, toy\)"):
        config.check_overrides(["method=nope"])
    plan = plan_sweep(compose(["sweep=smoke", "sweep.methods=[toy,dpo]"]), overrides=[])
    assert plan.methods == ["toy", "dpo"]
    assert sorted(plan.spaces["toy"]) == ["method.beta", "method.lr"]
    trial = compose(plan.trial_overrides["toy"])
    validate(trial)
    assert (trial.method.name, trial.method.beta, trial.train.max_steps) == ("toy", 0.5, 4)  # the smoke budget


def test_a_toy_method_added_as_one_row_trains(toy_method, workdir):
    from alignbench.training.run import train

    tracker = NullTracker()
    result = train(compose([*FAST, "method=toy"]), tracker)
    assert toy_method == [8] * 6  # its objective, on every one of the 6 steps' train.batch_size=8 pairs
    losses = [m["train/loss"] for _, m in tracker.metrics if "train/loss" in m]
    assert len(losses) == 4 and all(0 <= x < 10 for x in losses)  # steps 1, 2, 4, 6; a hinge is never negative
    assert losses[0] == pytest.approx(1.0)  # step 1: the policy is the reference, margin 0, hinge 1
    assert tracker.tags["method"] == "toy" and tracker.params["method.beta"] == 0.5
    m = result.metrics
    assert 0 <= m["eval/win_rate"] <= 1 and math.isfinite(m["eval/kl"])
    assert "eval/pref_accuracy" not in m  # implicit_reward=None: the evaluator has no margin to rank with


# --------------------------------------------------------------------------- the six rows

def test_the_rows_say_which_loop_reference_and_reward_each_method_has():
    assert [n for n, m in METHODS.items() if m.loop == "online"] == ["ppo", "rloo"]
    assert [n for n, m in METHODS.items() if not m.uses_reference] == ["simpo"]
    assert [n for n, m in METHODS.items() if m.unpaired] == ["kto"]
    assert [n for n, m in METHODS.items() if m.value_head] == ["ppo"]
    policy, reference, n = torch.tensor([-4.0]), torch.tensor([-6.0]), torch.tensor([2.0])
    assert METHODS["dpo"].implicit_reward(policy, reference, n).item() == 2.0     # log-ratio
    assert METHODS["simpo"].implicit_reward(policy, reference, n).item() == -2.0  # average log-prob
    assert methods.is_online("rloo") and not methods.is_online("dpo") and not methods.is_online("nope")


def test_simpo_and_ipo_log_their_conventions():
    assert METHODS["simpo"].params(compose(["method=simpo"]).method) == {"method.gamma": 1.25}  # 0.5 x beta 2.5
    ipo = compose(["method=ipo"]).method
    assert METHODS["ipo"].params(ipo) == {"method.convention": "mean over tokens (TRL)"}


def test_rloo_objective_gives_each_token_its_leave_one_out_advantage():
    rewards = torch.tensor([[0.0, 1.0], [0.0, 3.0]])  # two samples of one prompt, sequence rewards 1 and 3
    mask = torch.ones(2, 2)
    advantages, returns = METHODS["rloo"].objective(compose(["method=rloo", "method.rloo_k=2"]).method)(
        rewards, None, mask)
    assert advantages.tolist() == [[-2.0, -2.0], [2.0, 2.0]]
    assert returns.tolist() == [[1.0, 1.0], [3.0, 3.0]]


def test_no_module_but_the_table_compares_a_method_name():
    """No method name compared in alignbench/ outside methods.py (names in docstrings and tags are not compares)."""
    names = "|".join(METHODS)
    compared = re.compile(rf"""(==|!=|\bin)\s*\(?["']({names})["']|["']({names})["']\s*(==|!=)""")
    for old in ('if self.method == "simpo":', 'online = cfg.method.name in ("ppo", "rloo")', '"kto" != name'):
        assert compared.search(old), old  # what the table replaced would be found
    hits = [f"{path}:{n}" for path in (ROOT / "alignbench").rglob("*.py") if path.name != "methods.py"
            for n, line in enumerate(path.read_text().splitlines(), 1) if compared.search(line)]
    assert hits == []
