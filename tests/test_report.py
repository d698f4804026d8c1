"""`alignbench report` on fabricated sweeps (tests/fake_sweep.py): no training, seconds not minutes."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from alignbench.report.build import build_report
from alignbench.report.formatting import fmt
from alignbench.report.reading import load_studies
from alignbench.report.rendering import md_cell
from chromium import chromium  # noqa: F401  (session fixture: installs chromium when missing)
from fake_sweep import HOSTILE, SPACES, fabricate_sweep

N_PROMPTS = 24
N_TEST = 10
CONFIRM_QUALITY = {"dpo": 0.0, "ipo": 1.5, "simpo": 0.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store with five sweeps (creating the sqlite schema is the slow part)."""
    root = tmp_path_factory.mktemp("mlflow")
    sweeps = {
        "main": fabricate_sweep(root, "main", methods=("dpo", "ipo"), n_trials=3, hostile=True, n_prompts=N_PROMPTS),
        "faulty": fabricate_sweep(root, "faulty", methods=("dpo", "ipo"), seed=1, n_prompts=N_PROMPTS, study_params="sweep_py",
                                  states={"dpo": ["COMPLETE", "PRUNED", "FAIL"], "ipo": ["FAIL", "PRUNED"]}),
        "single": fabricate_sweep(root, "single", methods=("simpo",), n_trials=3, builtin=False, study_params="none",
                                  n_prompts=N_PROMPTS, confirm_seeds=0),
        # ipo clearly better; dpo and simpo confirmation samples identical
        "confirmed": fabricate_sweep(root, "confirmed", methods=("dpo", "ipo", "simpo"), n_trials=2, seed=2,
                                     n_prompts=8, confirm_seeds=3, confirm_quality=CONFIRM_QUALITY,
                                     n_test_prompts=N_TEST, samples_per_prompt=2),
        "latest": fabricate_sweep(root, "latest", methods=("dpo",), n_trials=3, n_prompts=8, objective="pareto"),
    }
    return root, sweeps


def _cfg(uri, sweep, out):
    return OmegaConf.create({"tracking": {"uri": uri}, "report": {"sweep": sweep, "out_dir": str(out)}, "seed": 0})


def _built(store, name: str, out_dir):
    """The fabricated sweep `name`, its report folder, summary.json and report.html."""
    fake = store[1][name]
    out = build_report(_cfg(fake.uri, name, out_dir))
    return fake, out, json.loads((out / "summary.json").read_text()), (out / "report.html").read_text()


@pytest.fixture(scope="module")
def main_report(store, tmp_path_factory):
    return _built(store, "main", tmp_path_factory.mktemp("reports"))


def test_report_writes_every_output(main_report):
    fake, out, summary, html = main_report
    assert out.name == "main"
    for name in ("report.html", "report.md", "runs.csv", "summary.json"):
        assert (out / name).stat().st_size > 0
    figs = {p.name for p in (out / "figures").glob("*.png")}
    assert {"winrate_vs_kl.png", "gold_vs_kl.png", "gold_frontier.png", "training_curves.png", "sensitivity_dpo.png",
            "sensitivity_ipo.png", "importance_dpo.png", "history_dpo.png", "importance_ipo.png",
            "history_ipo.png"} <= figs
    with open(out / "runs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["run_id"] for r in rows} == {r["run_id"] for runs in fake.runs.values() for r in runs}
    assert {"metrics.eval/win_rate", "params.method.beta", "state"} <= set(rows[0])
    # one <img> per figure file, all embedded
    assert len(re.findall(r"<img ", html)) == len(figs)


def test_headline_numbers_equal_mlflow_metrics_of_the_runs_named(main_report):
    fake, out, summary, html = main_report
    client = MlflowClient(tracking_uri=fake.uri)
    headline = {r["method"]: r for r in summary["headline"]}
    assert set(headline) == {"dpo", "ipo"}
    table = html.split('id="headline-table"')[1].split("</table>")[0]
    for method, row in headline.items():
        complete = [r for r in fake.runs[method] if r["state"] == "COMPLETE"]
        expected = max(complete, key=lambda r: r["metrics"]["eval/win_rate"])
        assert row["run_id"] == expected["run_id"]
        logged = client.get_run(row["run_id"]).data.metrics
        for key in ("eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/kl", "eval/kl_per_token",
                    "eval/policy_reward", "eval/gold_reward", "eval/policy_length", "time/total_seconds",
                    "train/tokens"):
            assert row[key] == logged[key], key
        for key in ("eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/kl", "eval/policy_reward"):
            assert fmt(logged[key]) in table
        assert row["run_id"] in table
        assert row["hyperparameters"].keys() == set(expected["params"]) & {"method.beta", "method.tau", "method.lr"}
        assert (row["n_complete"], row["n_pruned"], row["n_fail"]) == (3, 0, 0)


def test_html_is_self_contained(main_report):
    _, out, _, html = main_report
    lower = html.lower()
    for bad in ("http://", "https://", "//cdn", "<script", "<link", "@import", "url("):
        assert bad not in lower, bad
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_hostile_generation_is_escaped(main_report):
    _, out, _, html = main_report
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>this</b>" not in html and "&lt;b&gt;this&lt;/b&gt;" in html
    md = (out / "report.md").read_text()
    assert HOSTILE not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md


def test_statistics_pair_the_best_trials(main_report):
    fake, _, summary, html = main_report
    (cmp,) = summary["comparisons"]
    headline = {r["method"]: r for r in summary["headline"]}
    assert (cmp["method_a"], cmp["method_b"], cmp["n"]) == ("dpo", "ipo", N_PROMPTS)
    # the fabricated metrics come from the same samples table, so the paired data reproduce them
    assert cmp["win_rate_a"] == pytest.approx(headline["dpo"]["eval/win_rate"])
    assert cmp["win_rate_b"] == pytest.approx(headline["ipo"]["eval/win_rate"])
    # the per-prompt win indicators of the two best trials, worked out here from the fabricated rows
    indicator = {"policy": 1.0, "tie": 0.5, "reference": 0.0}
    rows = {m: next(r["rows"] for r in fake.runs[m] if r["run_id"] == headline[m]["run_id"]) for m in ("dpo", "ipo")}
    diffs = [indicator[a["winner"]] - indicator[b["winner"]] for a, b in zip(rows["dpo"], rows["ipo"])]
    assert cmp["diff"] == pytest.approx(sum(diffs) / N_PROMPTS)
    assert (cmp["a_better"], cmp["b_better"]) == (sum(d > 0 for d in diffs), sum(d < 0 for d in diffs))
    assert cmp["ci_low"] <= cmp["diff"] <= cmp["ci_high"]
    assert cmp["p_sign_holm"] == pytest.approx(cmp["p_sign"])  # one pair: Holm changes nothing
    lc = summary["length_controlled"]
    assert set(lc) == {"dpo", "ipo"} and all(0 <= v["lc_win_rate"] <= 1 for v in lc.values())
    assert all(v["lc_win_rate_ci"][0] <= v["lc_win_rate"] <= v["lc_win_rate_ci"][1] for v in lc.values())
    assert 'id="comparisons"' in html and 'id="lc"' in html


def test_importances_cover_each_studys_swept_params(main_report):
    fake, _, summary, _ = main_report
    for row in summary["headline"]:
        assert set(row["importances"]) == set(SPACES[row["method"]])
        assert sum(row["importances"].values()) == pytest.approx(1.0)


def test_importances_rank_the_param_that_determines_the_objective_first():
    from alignbench.report.analysis import importances

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: 10 * t.suggest_float("decisive", 0, 1) + 0 * t.suggest_float("noise", 0, 1), n_trials=30)
    imp, why = importances(study)
    assert why is None and list(imp) == ["decisive", "noise"]
    assert imp["decisive"] > 0.9 and imp["noise"] < 0.1
    one = optuna.create_study()
    one.optimize(lambda t: t.suggest_float("decisive", 0, 1), n_trials=1)
    assert importances(one) == (None, "1 complete trial(s); importances need at least 2")


def test_parent_run_has_the_report(main_report):
    fake, _, _, _ = main_report
    client = MlflowClient(tracking_uri=fake.uri)
    names = {a.path for a in client.list_artifacts(fake.parent_run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/runs.csv", "report/figures"} <= names
    figs = {a.path for a in client.list_artifacts(fake.parent_run_id, "report/figures")}
    assert "report/figures/winrate_vs_kl.png" in figs


def test_sweep_with_failed_and_pruned_trials(store, tmp_path):
    _, sweeps = store
    fake = sweeps["faulty"]
    out = build_report(_cfg(fake.uri, "faulty", tmp_path))
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["method"]: r for r in summary["headline"]}
    assert (rows["dpo"]["n_complete"], rows["dpo"]["n_pruned"], rows["dpo"]["n_fail"]) == (1, 1, 1)
    assert (rows["ipo"]["n_complete"], rows["ipo"]["n_pruned"], rows["ipo"]["n_fail"]) == (0, 1, 1)
    assert "run_id" not in rows["ipo"]
    assert rows["dpo"]["run_id"] == next(r["run_id"] for r in fake.runs["dpo"] if r["state"] == "COMPLETE")
    html = (out / "report.html").read_text()
    assert "no complete trial" in html
    assert any("importances skipped" in n for n in summary["notes"]["optuna"])  # 1 complete trial < 2
    # studies found as sweep.py records them (param sweep.storage = journal:///..., `<experiment>/<method>`)
    assert (out / "figures" / "history_dpo.png").exists()
    assert not (out / "figures" / "history_ipo.png").exists()  # no complete trial
    with open(out / "runs.csv") as fh:
        states = sorted(r["state"] for r in csv.DictReader(fh))
    assert states == ["COMPLETE", "FAIL", "FAIL", "PRUNED", "PRUNED"]


def test_single_method_sweep_without_study_params(store, tmp_path):
    _, sweeps = store
    fake = sweeps["single"]
    out = build_report(_cfg(fake.uri, "single", tmp_path))
    summary = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in summary["headline"]] == ["simpo"]
    assert summary["comparisons"] == []
    assert any("sweep.storage" in n for n in summary["notes"]["optuna"])
    assert summary["verdict"] is None and "confirm_seeds=0" in summary["notes"]["confirmation"][0]
    assert summary["notes"]["lc"] == []  # a reward-model judge: length control is the usual correction
    assert not (out / "figures" / "gold_vs_kl.png").exists()  # not the built-in task
    assert (out / "figures" / "sensitivity_simpo.png").exists()
    html = (out / "report.html").read_text()
    assert "skipped" in html and "https://" not in html


def test_latest_sweep_by_default_and_unknown_sweep(store, tmp_path):
    _, sweeps = store
    fake = sweeps["latest"]
    out = build_report(_cfg(fake.uri, None, tmp_path))
    assert out.name == "latest"
    # a multi-objective (Pareto) sweep: Optuna's analysis reads the win-rate objective
    assert {"history_dpo.png", "importance_dpo.png"} <= {p.name for p in (out / "figures").glob("*.png")}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "pareto" and any("Pareto" in n for n in summary["notes"]["headline"])
    with pytest.raises(LookupError, match="nope"):
        build_report(_cfg(fake.uri, "nope", tmp_path))
    # the experiment name works too
    assert build_report(_cfg(fake.uri, "sweep-latest", tmp_path)).name == "latest"


def test_load_studies_reads_parent_params(store):
    _, sweeps = store
    fake = sweeps["main"]
    parent = MlflowClient(tracking_uri=fake.uri).get_run(fake.parent_run_id)
    studies = load_studies(parent)
    assert sorted(studies) == ["dpo", "ipo"]
    assert studies["dpo"].study_name == fake.study_names["dpo"]
    assert len(studies["ipo"].trials) == 3


def test_html_renders_offline_in_headless_chromium(main_report, tmp_path, chromium):
    import numpy as np
    from matplotlib.image import imread

    _, out, _, _ = main_report
    shot = tmp_path / "shot.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           "--disable-background-networking", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,4000", f"--screenshot={shot}",
           (out / "report.html").as_uri()]
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
        cmd = ["unshare", "-rn", *cmd]  # no network at all
    subprocess.run(cmd, capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 50_000
    img = imread(shot)
    assert img.shape[:2] == (4000, 1280)
    rows_with_content = (img[..., :3].std(axis=(1, 2)) > 0.02).mean()
    assert rows_with_content > 0.3  # not a blank page: text and figures fill much of it
    assert len(np.unique((img[::8, ::8, :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50


def test_report_fits_the_page_at_common_widths(main_report, confirmed_report, chromium):
    """At 1,000-1,600 px no element reaches past the viewport (a table wider than its box would scroll
    inside it), and at 1,400 px and up every table fits its box: nothing to scroll."""
    from chromium import OVERFLOWING_JS, Page

    wide_boxes = ("[...document.querySelectorAll('.wide')].filter(d => d.scrollWidth > d.clientWidth + 1)"
                  ".map(d => [d.firstElementChild.id, d.scrollWidth, d.clientWidth])")
    with Page(chromium) as page:
        for _, out, _, _ in (main_report, confirmed_report):
            for width in (1000, 1400, 1600):
                page.goto((out / "report.html").as_uri(), width=width, height=900)
                assert page.evaluate("document.documentElement.clientWidth") == width
                assert page.evaluate("document.documentElement.scrollWidth") == width, (out.name, width)
                assert page.evaluate(OVERFLOWING_JS) == [], (out.name, width)
                if width >= 1400:
                    assert page.evaluate(wide_boxes) == [], (out.name, width)
                assert page.evaluate("document.querySelectorAll('#headline-table tr').length") >= 2


def test_parent_run_description_has_the_verdict_tables_and_report_path(confirmed_report):
    fake, out, summary, _ = confirmed_report
    note = MlflowClient(tracking_uri=fake.uri).get_run(fake.parent_run_id).data.tags["mlflow.note.content"]
    assert f"**Verdict:** {md_cell(summary['verdict']['statement'])}" in note
    rows = {line.split(" | ")[0].strip("| *"): line for line in note.splitlines() if line.startswith("| **")}
    for m, r in summary["confirmation"]["methods"].items():  # the confirmation table, then the search table
        assert f"| **{fmt(r['win_rate_mean'])}** | [{fmt(r['win_rate_ci_low'])}, {fmt(r['win_rate_ci_high'])}] |" in note
        assert f"| {fmt(r['kl_mean'])} |" in note and m in rows
    assert note.count("| **dpo** |") == 2
    assert f"**Report:** `{(out / 'report.html').resolve()}`" in note
    assert "viewStateShareKey=alignbench" in note and len(note) < 8000


def test_examples_are_the_prompts_where_the_methods_disagree_most():
    from alignbench.report.analysis import example_rows

    dpo = pd.DataFrame({"prompt": ["a", "b", "c", "d"], "reference_score": [0.0, 0.0, 0.0, 0.0],
                        "policy_score": [0.1, 2.0, -0.5, 0.3]}, index=[10, 11, 12, 13])
    kto = pd.DataFrame({"prompt": ["d", "c", "b", "a"], "policy_score": [0.2, 1.5, 2.1, 0.0]})
    # spreads over (reference, dpo, kto): a 0.1, b 2.1, c 2.0, d 0.3 -> b, c, then d
    assert example_rows({"dpo": dpo, "kto": kto}, 3) == [11, 12, 13]
    assert example_rows({"dpo": dpo}, 2) == [11, 12]  # one method: |policy - reference|
    flat = dpo.assign(policy_score=0.0)
    assert example_rows({"dpo": flat}, 2) == [10, 11]  # no disagreement: eval order


def test_paired_comparison_on_hand_worked_samples():
    from alignbench.report.analysis import paired_comparisons

    a = pd.DataFrame({"prompt": ["p1", "p2", "p3", "p4"], "winner": ["policy", "policy", "tie", "reference"]})
    # the same prompts in another order: paired by prompt, not by position
    b = pd.DataFrame({"prompt": ["p4", "p3", "p2", "p1"], "winner": ["reference", "tie", "tie", "reference"]})
    (row,) = paired_comparisons({"a": a, "b": b}, n_boot=2000)
    # indicators a = (1, 1, 1/2, 0), b = (0, 1/2, 1/2, 0): differences (1, 1/2, 0, 0)
    assert (row["win_rate_a"], row["win_rate_b"], row["diff"]) == pytest.approx((0.625, 0.25, 0.375))
    # sign test: 2 positive, 0 negative, ties dropped -> two-sided P = 2 * (1/2)^2
    assert (row["a_better"], row["b_better"], row["p_sign"]) == (2, 0, pytest.approx(0.5))
    assert row["p_sign_holm"] == pytest.approx(0.5) and row["n"] == 4


def test_best_trial_is_the_highest_objective_then_lower_kl_then_earliest():
    from alignbench.report.analysis import best_trials

    trials = pd.DataFrame({"run_id": ["r0", "r1", "r2", "r3"], "method": ["dpo", "dpo", "dpo", "ipo"],
                           "state": ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"], "trial_number": [0, 1, 2, 0],
                           "metrics.eval/win_rate": [0.6, 0.6, 0.9, 0.9], "metrics.eval/kl": [2.0, 1.0, 0.1, 0.1]})
    assert {m: b["run_id"] for m, b in best_trials(trials).items()} == {"dpo": "r0"}  # earliest of the tie
    assert best_trials(trials, kl_tiebreak=True)["dpo"]["run_id"] == "r1"  # lower KL first


# --- Confirmation runs: the verdict ------------------------------------------------------------

INDICATOR = {"policy": 1.0, "tie": 0.5, "reference": 0.0}


@pytest.fixture(scope="module")
def confirmed_report(store, tmp_path_factory):
    return _built(store, "confirmed", tmp_path_factory.mktemp("confirmed"))


def _prompt_mean(rows, key: str) -> float:
    """By hand: the mean over prompts of the mean over each prompt's samples."""
    per_prompt = {}
    for r in rows:
        per_prompt.setdefault(r["prompt_index"], []).append(INDICATOR[r["winner"]] if key == "win" else r[key])
    return sum(sum(v) / len(v) for v in per_prompt.values()) / len(per_prompt)


def test_confirmation_means_equal_the_fabricated_tables(confirmed_report):
    fake, out, summary, _ = confirmed_report
    conf = summary["confirmation"]
    assert (conf["n_seeds"], conf["n_prompts"], conf["seeds"]) == (3, N_TEST, [3, 4, 5])
    assert set(conf["methods"]) == set(CONFIRM_QUALITY)
    for method, runs in fake.confirmations.items():
        row = conf["methods"][method]
        assert row["seeds"] == [3, 4, 5] and [s["seed"] for s in row["per_seed"]] == [3, 4, 5]
        for key, name in (("win", "win_rate"), ("kl", "kl"), ("policy_gold", "gold")):
            per_seed = [_prompt_mean(r["rows"], key) for r in runs]
            assert [s[name] for s in row["per_seed"]] == pytest.approx(per_seed)
            assert row[f"{name}_mean"] == pytest.approx(sum(per_seed) / 3)
            assert row[f"{name}_ci_low"] <= row[f"{name}_mean"] <= row[f"{name}_ci_high"]
        # each seed's FINISHED run, not the KILLED attempt before it
        assert [s["run_id"] for s in row["per_seed"]] == [r["run_id"] for r in runs]
    # the confirmation runs are not search trials
    with open(out / "runs.csv") as fh:
        assert {r["run_id"] for r in csv.DictReader(fh)} == {r["run_id"] for rs in fake.runs.values() for r in rs}
    assert all(r["n_complete"] == 2 for r in summary["headline"])


def test_verdict_ranks_the_clearly_better_method_first_and_groups_identical_ones(confirmed_report):
    _, _, summary, _ = confirmed_report
    verdict, conf = summary["verdict"], summary["confirmation"]
    assert verdict["ranking"] == ["ipo", "dpo", "simpo"]  # dpo and simpo tie: name order
    assert verdict["groups"] == [["ipo"], ["dpo", "simpo"]]
    assert verdict["text"] == verdict["statement"] + "\n" + verdict["intervals"]
    assert "ipo is ahead of dpo and simpo" in verdict["statement"] and "3 seeds × 10 test prompts" in verdict["statement"]
    pairs = {(c["a"], c["b"]): c for c in conf["pairwise"]}
    assert set(pairs) == {("ipo", "dpo"), ("ipo", "simpo"), ("dpo", "simpo")}
    means = {m: r["win_rate_mean"] for m, r in conf["methods"].items()}
    for b in ("dpo", "simpo"):
        assert pairs[("ipo", b)]["significant"] and pairs[("ipo", b)]["low"] > 0
        assert pairs[("ipo", b)]["diff"] == pytest.approx(means["ipo"] - means[b])
    same = pairs[("dpo", "simpo")]
    assert (same["diff"], same["p_holm"], same["significant"]) == (0.0, 1.0, False)


def test_report_opens_with_the_verdict(confirmed_report):
    _, out, summary, html = confirmed_report
    verdict = summary["verdict"]
    sections = (out / "report.md").read_text().split("\n## ")
    assert sections[1].startswith("Verdict\n")
    assert md_cell(verdict["statement"]) in sections[1] and md_cell(verdict["intervals"]) in sections[1]
    assert "3 fresh seeds (3, 4, 5)" in sections[1] and f"{N_TEST} held-out test prompts" in sections[1]
    assert sections[2].startswith("Confirmation")
    assert sections[3].startswith("Search phase") and "optimistically biased" in sections[3]
    assert html.index('id="verdict-text"') < html.index('id="confirmation-table"') < html.index('id="headline"')
    assert 'id="confirmation-pairwise"' in html and "optimistically biased" in html


def test_sweep_without_confirmation_says_so_and_makes_no_verdict(main_report):
    _, out, summary, html = main_report
    assert summary["verdict"] is None and summary["confirmation"] is None
    (note,) = summary["notes"]["confirmation"]
    assert note.startswith("No confirmation") and "older sweep" in note and "no verdict" in note
    first = (out / "report.md").read_text().split("\n## ")[1]
    assert first.startswith("Verdict\n") and "No confirmation" in first
    assert "No confirmation" in html and 'id="confirmation-table"' not in html


def test_honesty_notes_importance_evaluator_and_length_control_under_gold(main_report):
    _, out, summary, html = main_report
    md = (out / "report.md").read_text()
    assert "PED-ANOVA" in md and "PED-ANOVA" in html
    # 3 complete trials: PED-ANOVA's top 10% holds one of them
    assert any("only 1 lie in PED-ANOVA's top 10%" in n for n in summary["notes"]["optuna"])
    (lc_note,) = summary["notes"]["lc"]  # the built-in task's gold judge
    assert "removes real signal" in lc_note and md_cell(lc_note) in md


def test_confirmation_tables_pair_by_prompt_and_leave_out_unmatched_methods():
    from alignbench.evaluation.confirmation import comparable, method_tables

    a = pd.DataFrame({"prompt": ["p1", "p2", "p1", "p2"], "winner": ["policy", "reference", "tie", "policy"],
                      "kl": [1.0, 2.0, 3.0, 4.0]})
    # no prompt_index: keyed by prompt text; p1 -> win (1 + 1/2) / 2, kl 2; p2 -> win 1/2, kl 3
    t, why = method_tables("a", {1: a, 2: a.iloc[::-1]}, {1: "r1", 2: "r2"})
    assert why is None and (t.seeds, t.prompts) == ([1, 2], ["p1", "p2"]) and "gold" not in t.tables
    assert t.tables["win"].loc[2].tolist() == [0.75, 0.5] and t.tables["kl"].loc[1].tolist() == [2.0, 3.0]
    b, _ = method_tables("b", {1: a, 2: a}, {})
    c, _ = method_tables("c", {1: a}, {})
    chosen, notes = comparable({"a": t, "b": b, "c": c})
    assert sorted(chosen) == ["a", "b"] and len(notes) == 1 and notes[0].startswith("c: confirmation seeds [1]")
    bad, why = method_tables("d", {1: a, 2: a[a["prompt"] == "p1"]}, {})
    assert bad is None and "different prompts" in why
