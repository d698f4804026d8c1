"""Sweeps timed by `alignbench bench`: a 4-trial DPO beta sweep of ours against four TRL runs, trial
by trial (`measure_sweep`), and the default comparison end to end (`measure_default_sweep`, only
with `--with-sweep`)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alignbench.bench.measurements import compose, scratch_cache
from alignbench.bench.trl_peer import run_trl, sft_model_path, write_pairs_file

BETAS = (0.05, 0.1, 0.2, 0.4)  # the 4-trial DPO beta sweep


def measure_sweep(args, sizes, main_cache: Path, scratch: Path) -> dict:
    """Trial k of our sweep, then TRL's run k, alternating (so a change in machine load hits both
    sides alike). Both start cold and keep their caches from trial to trial, as each does in a
    sweep: ours its content-keyed reference caches, TRL its `datasets` cache of the tokenised pairs
    and reference log-probs (a pairs file on disk, loaded with `datasets.load_dataset`)."""
    from alignbench.training.settings import run_settings
    from alignbench.training.setup import prepare

    scratch_cache(main_cache, scratch)
    steps = sizes["sweep_steps"] or int(compose(args).train.max_steps)  # default: a default trial's budget
    extra = [f"train.max_steps={steps}", f"cache_dir={main_cache}"]
    prepared = prepare(run_settings(compose(args, *extra)))  # the same records and the SFT path for TRL (not timed)
    sft = sft_model_path(compose(args, *extra), prepared.models)
    pairs = write_pairs_file(prepared.train_records, prepared.models.tokenizer, scratch / "trl" / "pairs.jsonl")
    del prepared
    extra[-1] = f"cache_dir={scratch}"  # our sweep starts with cold reference and token caches
    ours, trl_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for beta in BETAS:
            cfg = compose(args, *extra, f"method.beta={beta}")
            ours.append(_our_trial(cfg, beta))
            trl_runs.append(run_trl(cfg, sft, pairs, scratch / "trl" / "datasets", steps, beta, tmp) | {"beta": beta})
    ours_s = sum(r["seconds_without_eval"] for r in ours)
    trl_s = sum(r["total_seconds"] for r in trl_runs)
    return {"sweep_speedup_vs_trl": trl_s / ours_s, "sweep_ours_seconds": ours_s, "sweep_trl_seconds": trl_s,
            "sweep_trials": len(BETAS), "sweep_steps_per_trial": steps, "sweep_eval": "excluded from both sides",
            "trl_reference_cache_hits": sum(r["reference_cache_hit"] for r in trl_runs),
            "raw_sweep_ours": ours, "raw_sweep_trl": trl_runs}


def _our_trial(cfg, beta: float) -> dict:
    """One trial of our sweep (`training.run.train`: loads its model, then trains), timed, with the
    evaluation time it included."""
    from alignbench.tracking.null import NullTracker
    from alignbench.training.run import train

    t0 = time.perf_counter()
    result = train(cfg, NullTracker())
    wall = time.perf_counter() - t0
    t = result.timings
    return {"beta": beta, "wall_seconds": wall, "eval_seconds": t["eval_seconds"],
            "setup_seconds": t["setup_seconds"], "reference_seconds": t["reference_seconds"],
            "train_seconds": t["train_seconds"], "seconds_without_eval": wall - t["eval_seconds"]}


def measure_default_sweep(args, main_cache: Path, workdir: Path) -> dict:
    """Wall seconds of `alignbench sweep` (the default comparison, confirmation included; `--quick`:
    the smoke sweep) end to end in a fresh directory, its SFT model from the bench's cache."""
    sweep = ["sweep=smoke"] if args.quick else []
    cmd = [sys.executable, "-m", "alignbench.cli", "sweep", *sweep]
    run_dir = workdir / "default_sweep"
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, ALIGNBENCH_CACHE=str(main_cache.resolve()))
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=run_dir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"`alignbench sweep {' '.join(sweep)}` failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"default_sweep_seconds": seconds, "default_sweep_command": "alignbench sweep " + " ".join(sweep)}
