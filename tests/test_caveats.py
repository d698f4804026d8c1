"""The verdict carries what limits it (`evaluation.caveats`): a judge at chance, too few seeds, diverged seeds."""

from __future__ import annotations

from alignbench.evaluation.caveats import MIN_SEEDS, caveated_verdict, verdict_caveats
from alignbench.evaluation.stats import verdict

JUDGE = ("the judge cannot tell chosen from rejected: its accuracy on 16 held-out preference pairs is 0.688 "
         "(95% CI [0.444, 0.858] includes 0.5), so its win rates mean nothing")


def _verdict(n_seeds: int) -> dict:
    return verdict({"dpo": 0.7, "simpo": 0.4}, [{"a": "dpo", "b": "simpo", "p_holm": 0.01}],
                   n_seeds=n_seeds, n_prompts=12)


def test_judge_at_chance_is_not_stated_as_a_finding():
    plain = _verdict(2)
    caveats = verdict_caveats(2, JUDGE, {"dpo": 1, "simpo": 0})
    assert caveats == [JUDGE, f"only 2 confirmation seeds: fewer than {MIN_SEEDS} hardly measure seed-to-seed "
                              "variance, so the intervals may be too narrow",
                       "diverged seeds (dpo 1) are part of those methods' results"]
    out = caveated_verdict(plain, caveats, judge_at_chance=True)
    assert plain["statement"].startswith("dpo is ahead of simpo (")
    assert out["statement"] == ("Not a finding, the judge is at chance; its order: " + plain["statement"]
                                + " Caveats: " + "; ".join(caveats) + ".")
    assert out["finding"] is False and out["caveats"] == caveats
    assert out["text"] == out["statement"] + "\n" + plain["intervals"]
    assert out["ranking"] == plain["ranking"] and out["groups"] == plain["groups"]


def test_enough_seeds_and_a_judge_above_chance_leave_the_verdict_as_it_is():
    plain = _verdict(MIN_SEEDS)
    caveats = verdict_caveats(MIN_SEEDS, None, {"dpo": 0})
    out = caveated_verdict(plain, caveats, judge_at_chance=False)
    assert caveats == [] and out["statement"] == plain["statement"] and out["finding"] is True


def test_one_seed_alone_is_a_caveat_without_a_judge_caveat():
    out = caveated_verdict(_verdict(1), verdict_caveats(1), judge_at_chance=False)
    assert out["finding"] is True and out["statement"].endswith(
        f"Caveats: only 1 confirmation seed: fewer than {MIN_SEEDS} hardly measure seed-to-seed variance, so the "
        "intervals may be too narrow.")
