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
# dpo and simpo far below ipo on every seed: at quality 0 their seeds spread 0.33-0.73 on 10 prompts,
# and a t test on 3 seed differences of 0.23-0.58 (the report's test) could not order them.
CONFIRM_QUALITY = {"dpo": -1.0, "ipo": 1.5, "simpo": -1.0}
CONFIRM_DIVERGED = {"ipo": {4: 80}, "simpo": {7: 2}}  # ipo's seed 4 finished diverged; simpo's seed 7 failed


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
                                     n_test_prompts=N_TEST, samples_per_prompt=2, confirm_diverged=CONFIRM_DIVERGED),
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


# Table cells (generations aside: they may break inside a model's long runs of characters) whose
# text breaks inside a word, or whose content is wider than the cell: [[table id, cell text], ...].
SPLIT_CELLS_JS = """(() => {
  const out = [];
  for (const cell of document.querySelectorAll('td, th')) {
    if (cell.classList.contains('gen')) continue;
    const table = cell.closest('table').id || '(table)';
    if (cell.scrollWidth > cell.clientWidth + 1) { out.push([table, cell.innerText.slice(0, 60)]); continue; }
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const m of node.textContent.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, m.index); range.setEnd(node, m.index + m[0].length);
        const lines = new Set([...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top)));
        if (lines.size > 1) out.push([table, m[0]]);
      }
    }
  }
  return out.slice(0, 10);
})()"""


def test_report_reads_at_common_widths(main_report, confirmed_report, chromium):
    """At 900, 1,400 and 1,920 px the page is no wider than the window (a table wider than its box
    scrolls inside it) and no table cell breaks inside a word or number or is narrower than its
    content (cell text then reads down the page a character at a time)."""
    from chromium import OVERFLOWING_JS, Page

    with Page(chromium) as page:
        for _, out, _, _ in (main_report, confirmed_report):
            for width in (900, 1400, 1920):
                page.goto((out / "report.html").as_uri(), width=width, height=900)
                assert page.evaluate("document.documentElement.clientWidth") == width
                assert page.evaluate("document.documentElement.scrollWidth") == width, (out.name, width)
                assert page.evaluate(OVERFLOWING_JS) == [], (out.name, width)
                assert page.evaluate(SPLIT_CELLS_JS) == [], (out.name, width)
                assert page.evaluate("document.querySelectorAll('#headline-table tr').length") >= 2


def test_split_cell_check_catches_a_squeezed_table(main_report, chromium, tmp_path):
    """The check above fails on the layout it guards against: cells allowed to break anywhere
    inside a table held to the page's width."""
    from chromium import Page

    _, out, _, html = main_report
    squeezed = tmp_path / "squeezed.html"
    squeezed.write_text(html.replace("</style>", ".wide table { max-width: 100%; } th, td { overflow-wrap: anywhere; "
                                                 "white-space: normal !important; } .kv { white-space: normal; }</style>"))
    with Page(chromium) as page:
        page.goto(squeezed.as_uri(), width=900, height=900)
        split = page.evaluate(SPLIT_CELLS_JS)
    assert split and {"headline-table"} <= {t for t, _ in split}, split


def test_parent_run_description_has_the_verdict_tables_and_report_path(confirmed_report):
    fake, out, summary, _ = confirmed_report
    note = MlflowClient(tracking_uri=fake.uri).get_run(fake.parent_run_id).data.tags["mlflow.note.content"]
    assert f"**Verdict:** {md_cell(summary['verdict']['statement'])}" in note
    # the confirmation table, then the search table: ruled text in fenced blocks (MLflow draws
    # Markdown tables without borders, so their cells run together)
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in note.splitlines() if line.startswith("| ")]
    for m, r in summary["confirmation"]["methods"].items():
        assert [m, "3", fmt(r["win_rate_mean"]), f"[{fmt(r['win_rate_ci_low'])}, {fmt(r['win_rate_ci_high'])}]",
                fmt(r["kl_mean"]), f"[{fmt(r['kl_ci_low'])}, {fmt(r['kl_ci_high'])}]"] == cells[1 + sorted(
                    summary["confirmation"]["methods"]).index(m)][:6]
    assert [c[0] for c in cells].count("dpo") == 2 and note.count("```") == 4
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
    # The calibration at this design, from these tables: an A/A rate, and seeds for the one open pair.
    cal = conf["calibration"]
    assert cal["available"] and (cal["n_seeds"], cal["n_prompts"], cal["n_sim"]) == (3, N_TEST, 1000)
    assert set(cal["methods"]) == {"ipo", "dpo", "simpo"} and 0 <= cal["false_positive"]["rate"] <= 0.1
    open_pairs = [(c["a"], c["b"]) for c in cal["pairs"] if not c["resolved"]]
    assert open_pairs == [("dpo", "simpo")]
    assert verdict["calibration"].startswith("Calibration at this design (3 seeds × 10 prompts")
    assert "dpo vs simpo" not in verdict["calibration"]  # identical tables: no difference for seeds to find


def test_diverged_seeds_are_counted_marked_and_plotted(confirmed_report):
    _, out, summary, html = confirmed_report
    conf = summary["confirmation"]
    # the count per method (failed seeds included), for the verdict's sentence
    assert summary["diverged_seeds"] == conf["diverged_seeds"] == {"dpo": 0, "ipo": 1, "simpo": 1}
    assert [(s["seed"], s["diverged"], s["diverged_step"]) for s in conf["methods"]["ipo"]["per_seed"]] == [
        (3, False, None), (4, True, 80), (5, False, None)]
    assert not any(s["diverged"] for s in conf["methods"]["simpo"]["per_seed"])  # seed 7 has no outcome
    assert conf["seeds"] == [3, 4, 5]  # the failed seed leaves the compared seeds alone
    assert any("simpo: confirmation seed 7 diverged at step 2 and failed (loss is nan at step 2)" in n
               for n in summary["notes"]["confirmation"])
    md = (out / "report.md").read_text()
    assert "4: " in md and "(diverged at step 80)" in md and "| 1 of 3 |" in md
    assert "diverged at step 80</b>" in html
    assert (out / "figures" / "confirmation_seeds.png").stat().st_size > 1000
    assert "figures/confirmation_seeds.png" in md and "Per-seed outcomes" in html


def test_robust_aggregates_sit_beside_the_mean(confirmed_report):
    _, _, summary, _ = confirmed_report
    conf = summary["confirmation"]
    for row in conf["methods"].values():  # three seeds: the IQM cuts none, so it is the mean
        assert row["win_rate_iqm"] == pytest.approx(row["win_rate_mean"])
        assert row["win_rate_iqm_ci_low"] <= row["win_rate_iqm"] <= row["win_rate_iqm_ci_high"]
    pairs = {(c["a"], c["b"]): c for c in conf["pairwise"]}
    assert pairs[("dpo", "simpo")]["p_improvement"] == 0.5  # identical seeds: every pair a tie
    assert pairs[("ipo", "dpo")]["p_improvement"] == 1.0  # every ipo seed above every dpo seed
    assert pairs[("ipo", "dpo")]["p_improvement_ci_low"] <= 1.0 == pairs[("ipo", "dpo")]["p_improvement_ci_high"]


def test_report_opens_with_the_verdict(confirmed_report):
    _, out, summary, html = confirmed_report
    verdict = summary["verdict"]
    sections = (out / "report.md").read_text().split("\n## ")
    assert sections[1].startswith("Verdict\n")
    assert md_cell(verdict["statement"]) in sections[1] and md_cell(verdict["intervals"]) in sections[1]
    assert md_cell(verdict["calibration"]) in sections[1]
    assert "3 fresh seeds (3, 4, 5)" in sections[1] and f"{N_TEST} held-out test prompts" in sections[1]
    assert sections[2].startswith("Confirmation")
    assert sections[3].startswith("Search phase") and "optimistically biased" in sections[3]
    assert html.index('id="verdict-text"') < html.index('id="confirmation-table"') < html.index('id="headline"')
    assert 'id="confirmation-pairwise"' in html and "optimistically biased" in html
    assert html.index('id="verdict-calibration"') < html.index('id="confirmation-table"')
    assert html.index('id="confirmation-pairwise"') < html.index('id="calibration-methods"') < html.index('id="headline"')


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
    from alignbench.confirm.tables import comparable, method_tables

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


def test_verdict_under_a_judge_at_chance_carries_the_warning(store, tmp_path):
    """A sweep whose judge is at chance on its held-out pairs, confirmed on 2 seeds: the verdict in
    report.html, report.md, summary.json and the parent run's description says it is not a finding."""
    fake = fabricate_sweep(store[0], "chance", methods=("dpo", "ipo"), n_trials=1, seed=3, n_prompts=8,
                           confirm_seeds=2, confirm_quality={"dpo": 0.0, "ipo": 1.5}, n_test_prompts=6)
    client = MlflowClient(tracking_uri=fake.uri)
    judge = {"eval/judge_accuracy": 0.6875, "eval/judge_accuracy_ci_low": 0.444,
             "eval/judge_accuracy_ci_high": 0.858, "eval/judge_n_pairs": 16}
    for k, v in judge.items():
        client.log_metric(fake.runs["dpo"][0]["run_id"], k, v)
    out = build_report(_cfg(fake.uri, "chance", tmp_path))
    summary = json.loads((out / "summary.json").read_text())
    statement = summary["verdict"]["statement"]
    assert statement.startswith("Not a finding, the judge is at chance; its order: ")
    assert "accuracy on 16 held-out preference pairs is 0.688 (95% CI [0.444, 0.858] includes 0.5)" in statement
    assert "only 2 confirmation seeds" in statement and summary["verdict"]["finding"] is False
    assert len(summary["verdict"]["caveats"]) == 2
    html = (out / "report.html").read_text()
    verdict_html = html[html.index('id="verdict-text"'):html.index('id="confirmation"')]
    assert "Not a finding, the judge is at chance" in verdict_html and "includes 0.5" in verdict_html
    assert md_cell(statement) in (out / "report.md").read_text()
    note = client.get_run(fake.parent_run_id).data.tags["mlflow.note.content"]
    assert f"**Verdict:** {md_cell(statement)}" in note
    metadata = dict(tuple(r) for r in summary["metadata"])
    assert metadata["seeds"] == "search trials: 3; confirmation: 4, 5"


def test_control_characters_in_generations_are_shown_escaped():
    """A browser draws control bytes as boxes ("boring□"): examples show them as escapes instead."""
    from alignbench.report.analysis import examples
    from alignbench.report.formatting import shown_text

    assert shown_text("boring\x01 a\nb\tc\x7f\x1b[0m\x85") == "boring\\x01 a\nb\tc\\x7f\\x1b[0m\\x85"
    samples = pd.DataFrame({"prompt": ["p\x02"], "reference_response": ["ok"], "policy_response": ["boring\x01"],
                            "reference_score": [0.0], "policy_score": [1.0], "winner": ["policy"]})
    (ex,) = examples({"dpo": samples}, ["dpo"], 1)
    assert (ex["prompt"], ex["reference"], ex["policies"][0]["response"]) == ("p\\x02", "ok", "boring\\x01")
