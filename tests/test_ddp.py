"""One trial on two CPU processes (DDP over gloo) under torchrun: one MLflow run, one result line, the
same loss curve and figures as one process at the same global batch; KTO's z0 and the caches shared
across ranks. The end-to-end runs are slow-marked (`pytest -m slow tests/test_ddp.py`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from helpers import FAST, PPO_FAST, RLOO_FAST, TINY, cli_env, mlflow_runs, run_cli

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
WORKER = Path(__file__).with_name("ddp_worker.py")
# FAST with every step's loss logged and one evaluation at the end.
DDP_RUN = [*FAST, "train.log_every=1", "eval.every_n_steps=0"]


def torchrun(*args: str, cwd, cache=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 <args>` to its end (a free port: --standalone)."""
    out = subprocess.run([*TORCHRUN[:3], "--standalone", *TORCHRUN[3:], *args], cwd=cwd, env=cli_env(cache),
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"torchrun {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def worker_results(check: str, tmp_path) -> list[dict]:
    torchrun(str(WORKER), check, str(tmp_path), cwd=tmp_path)
    return [json.loads((tmp_path / f"{check}-{rank}.json").read_text()) for rank in (0, 1)]


def test_kto_z0_is_the_mean_over_both_ranks(tmp_path):
    ranks = worker_results("kto", tmp_path)
    assert [r["processes"] for r in ranks] == [2, 2] and ranks[0]["backend"] == "gloo"
    local = [r["local_z0"] for r in ranks]
    assert local[0] != pytest.approx(local[1])  # each rank's own examples give its own z0 ...
    assert ranks[0]["z0"] == ranks[1]["z0"]    # ... the loss uses the same z0 on both: their mean
    assert ranks[0]["z0"] == pytest.approx(max(0.0, sum(local) / 2), rel=1e-5)


def test_ppo_whitens_each_ranks_rollout_with_the_statistics_of_both(tmp_path):
    """Each rank samples its own block of the rollout batch (RLOO's groups kept whole); advantages and
    rewards are whitened with both blocks' mean and variance: the same on both ranks, and the same
    numbers as whitening the whole batch on one process."""
    import torch

    from alignbench.losses.ppo import whiten, whitening_stats

    ranks = worker_results("whiten", tmp_path)
    assert [r["block"] for r in ranks] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert ranks[0]["local_mean"] != pytest.approx(ranks[1]["local_mean"], abs=0.5)  # the blocks differ ...
    assert (ranks[0]["mean"], ranks[0]["var"]) == (ranks[1]["mean"], ranks[1]["var"])  # ... their statistics do not
    x, mask = (torch.cat([torch.tensor(r[k]) for r in ranks]) for k in ("x", "mask"))
    mean, var = whitening_stats(x, mask)
    assert (ranks[0]["mean"], ranks[0]["var"]) == (pytest.approx(mean.item(), rel=1e-6), pytest.approx(var.item(), rel=1e-6))
    whole = whiten(x, mask)
    torch.testing.assert_close(torch.cat([torch.tensor(r["whitened"]) for r in ranks]), whole, atol=1e-5, rtol=0)


def test_rank_0_builds_a_cache_entry_the_other_rank_reads(tmp_path):
    ranks = worker_results("cache", tmp_path)
    assert (tmp_path / "cache-builds.txt").read_text().split() == ["0"]  # built once, by rank 0
    assert [r["value"] for r in ranks] == ["0", "0"]
    assert [r["hit"] for r in ranks] == [False, True]


def run_metrics(name: str) -> tuple[object, dict]:
    """(the run named `name`, {metric: [(step, value)]}) from this directory's store."""
    client = mlflow.MlflowClient()
    run = mlflow.search_runs(search_all_experiments=True, filter_string=f"attributes.run_name = '{name}'",
                             output_format="list")
    assert len(run) == 1, f"{len(run)} runs named {name}"
    keys = ("train/loss", "train/grad_norm", "train/margin", "train/tokens", "eval/win_rate", "eval/kl", "eval/gold_reward")
    return run[0], {k: [(m.step, m.value) for m in client.get_metric_history(run[0].info.run_id, k)] for k in keys}


@pytest.mark.slow
def test_dpo_on_two_processes_is_one_run_equal_to_one_process(workdir):
    two = torchrun("-m", "alignbench.cli", "train", *DDP_RUN, "threads=2", "tracking.run_name=two", cwd=workdir)
    lines = [line for line in two.stdout.splitlines() if line.startswith("method=dpo win_rate=")]
    assert len(lines) == 1, two.stdout  # rank 0's only
    run_cli("train", *DDP_RUN, "threads=1", "tracking.run_name=one", check=True, timeout=300)
    assert len(mlflow.search_runs(search_all_experiments=True)) == 2  # one per command
    run_two, curves_two = run_metrics("two")
    _, curves_one = run_metrics("one")
    assert run_two.info.status == "FINISHED" and lines[0].endswith(run_two.info.run_id)
    assert len(curves_two["train/loss"]) == 6  # every step logged once
    for key, curve in curves_one.items():
        assert [s for s, _ in curves_two[key]] == [s for s, _ in curve], key
        assert [v for _, v in curves_two[key]] == pytest.approx([v for _, v in curve], abs=1e-4), key


@pytest.mark.slow
def test_a_run_killed_under_ddp_resumes_to_finished(workdir):
    checkpointed = [*DDP_RUN, "threads=2", "train.checkpoint_every=2"]
    crashed = subprocess.run([*TORCHRUN[:3], "--standalone", *TORCHRUN[3:], "-m", "alignbench.cli", "train",
                              *checkpointed, "fault.raise_at_step=5"], cwd=workdir, env=cli_env(),
                             capture_output=True, text=True, timeout=300)
    assert crashed.returncode != 0
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED"
    resumed = torchrun("-m", "alignbench.cli", "train", *checkpointed, f"resume={run.info.run_id}", cwd=workdir)
    assert resumed.stdout.count("resumed from the checkpoint of step 4") == 2  # each rank restored it
    lines = [line for line in resumed.stdout.splitlines() if line.startswith("method=dpo win_rate=")]
    assert len(lines) == 1 and lines[0].endswith(run.info.run_id)
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FINISHED"
    losses = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in losses) == [1, 2, 3, 4, 5, 6]  # step 5 crashed before its log


@pytest.mark.slow
@pytest.mark.parametrize("method, keys", [("ppo", PPO_FAST), ("rloo", [*RLOO_FAST, "method.adaptive_kl=true"])])
def test_ppo_and_rloo_on_two_processes_are_one_finished_run(workdir, method, keys):
    """Each rank samples its own half of every rollout batch (RLOO: whole groups of k, with the adaptive
    KL controller fed the whole batch's KL); one run, FINISHED, one result line."""
    out = torchrun("-m", "alignbench.cli", "train", *keys, "threads=2", cwd=workdir)
    lines = [line for line in out.stdout.splitlines() if line.startswith(f"method={method} win_rate=")]
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(lines) == 1 and lines[0].endswith(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "ppo/approx_kl")) == [1, 2, 4, 6]


@pytest.mark.slow
def test_a_sweep_under_torchrun_runs_each_trial_on_both_processes(workdir):
    out = torchrun("-m", "alignbench.cli", "sweep", "sweep=smoke", "sweep.methods=[dpo]", "sweep.n_trials=2",
                   "sweep.confirm_seeds=1", "threads=2", *TINY, cwd=workdir, timeout=600)
    assert "dpo 2/2" in out.stdout and out.stdout.count("sweep smoke: best trial per method") == 1
    parents, trials = mlflow_runs(mlflow.get_tracking_uri(), "sweep-smoke")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    trained = [r for r in runs if r.data.tags.get("alignbench.role") != "sweep"]
    assert len(parents) == 1 and len(trials) == 2 and len(runs) == 4  # + 1 confirmation run, each recorded once
    assert [r.data.tags.get("alignbench.processes") for r in trained] == ["2", "2", "2"]
    assert {r.data.tags["optuna.trial_state"] for r in trained} <= {"COMPLETE", "PRUNED"}


def test_threads_batch_and_workers_take_the_process_count_into_account(monkeypatch):
    from alignbench.config import ConfigError, compose
    from alignbench.sweep.plan import plan_sweep
    from alignbench.training.distributed import check_batch_split, threads_per_process
    from alignbench.training.settings import run_settings

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert (threads_per_process(4), threads_per_process(3), threads_per_process(1)) == (2, 1, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"^train.batch_size=7: must divide by the 2 processes"):
        check_batch_split(7)
    ppo = run_settings(compose(["method=ppo", "train.batch_size=8", "method.rollout_batch_size=8",
                                "method.n_minibatches=8"]))
    with pytest.raises(ConfigError, match=r"each minibatch must divide by the 2 processes"):
        check_batch_split(ppo.train.batch_size, ppo.method.online)
    rloo = run_settings(compose(["method=rloo", "train.batch_size=8", "method.rollout_batch_size=12",
                                 "method.rloo_k=4", "method.n_minibatches=2"]))
    with pytest.raises(ConfigError, match=r"^method.rollout_batch_size=12: each of the 2 processes samples 6 of it, "
                                          r"which must be a multiple of method.rloo_k=4"):
        check_batch_split(rloo.train.batch_size, rloo.method.online)
    check_batch_split(8)  # no error: dpo, 8 pairs over 2 processes
    assert plan_sweep(compose(["sweep=smoke", "sweep.n_workers=auto"]), overrides=[]).n_workers == 1
    with pytest.raises(ConfigError, match=r"^sweep.n_workers=2: under torchrun / accelerate launch a sweep is one worker"):
        plan_sweep(compose(["sweep=smoke", "sweep.n_workers=2"]), overrides=[])


def test_end_processes_takes_the_group_down_and_is_a_no_op_without_one(tmp_path):
    import torch.distributed as dist

    from alignbench.training.distributed import end_processes, process_count

    end_processes()  # no group: nothing to do, no error
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized() and process_count() == 1
    end_processes()
    assert not dist.is_initialized()
