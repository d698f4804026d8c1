"""Our side of `alignbench bench` and every measurement: the composed configs (fp32 on CPU, no
tracking), our DPO loop's timings, a bare forward/backward step on the same batches, and the
`measure_*` functions whose results are the keys of bench.json (see `alignbench.bench.main`)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from alignbench.bench.sizes import QUICK
from alignbench.bench.trl_peer import run_trl, sft_model_path
from alignbench.data.batching import index_batches, trim_padding
from alignbench.data.tokenizing import tokenize_pairs
from alignbench.models.logps import pack_batch

BETAS = (0.05, 0.1, 0.2, 0.4)  # the 4-trial DPO beta sweep


# --------------------------------------------------------------------------- configs and caches

def base_overrides(args) -> list[str]:
    """Every bench config: untracked, fp32 on CPU, the --quick sizes if asked, then the user's overrides."""
    over = ["tracking.enabled=false", "precision=fp32", "device=cpu"]
    if args.quick:
        over += QUICK
    return over + list(args.overrides)


def compose(args, *extra: str):
    """The alignbench config for these bench arguments and `extra` overrides."""
    from alignbench.config import compose as hydra_compose

    return hydra_compose(base_overrides(args) + list(extra))


def scratch_cache(main_cache: Path, scratch: Path) -> Path:
    """A cache dir sharing the main cache's SFT model and task pairs (slow to make, identical for
    both sides) but with cold reference caches, so the sweep's first trial pays for them."""
    scratch.mkdir(parents=True, exist_ok=True)
    for kind in ("sft", "builtin_pairs"):
        (main_cache / kind).mkdir(parents=True, exist_ok=True)
        link = scratch / kind
        if not link.exists():
            link.symlink_to((main_cache / kind).resolve(), target_is_directory=True)
    return scratch



# --------------------------------------------------------------------------- our side

def run_ours_loop(cfg) -> dict:
    """`prepare` (warm cache) then `offline_loop`; the loop's own timings."""
    from alignbench.tracking.null import NullTracker
    from alignbench.training.offline import offline_loop
    from alignbench.training.setup import prepare

    prepared = prepare(cfg)
    result = offline_loop(cfg, prepared, NullTracker())
    t = result.timings
    return {"train_seconds": t["train_seconds"], "eval_seconds": t["eval_seconds"],
            "pairs_per_second": cfg.train.max_steps * cfg.train.batch_size / t["train_seconds"],
            "step_seconds": t["train_seconds"] / cfg.train.max_steps}


def bare_step_seconds(cfg, steps: int) -> float:
    """A bare LM step (forward, cross-entropy, backward, AdamW) on our loop's concatenated batches."""
    from alignbench.training.loop import make_optimizer
    from alignbench.training.setup import prepare

    prepared = prepare(cfg)
    batches = _loop_batches(cfg, prepared, steps)
    policy = prepared.models.policy
    policy.train()
    optimizer, _ = make_optimizer(cfg, [p for p in policy.parameters() if p.requires_grad], cfg.method.lr)
    t0 = time.perf_counter()
    for inputs in batches:
        ids = inputs["input_ids"]
        logits = policy(**inputs, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 ids[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - t0) / steps


def _loop_batches(cfg, prepared, steps: int) -> list[dict]:
    """The DPO loop's own batch order, padding and trimming (chosen ++ rejected rows), built before timing."""
    models = prepared.models
    tokens = tokenize_pairs(prepared.train_records, models.tokenizer, cfg.train.max_length,
                            cfg.train.max_prompt_length)
    n, bs = len(prepared.train_records), cfg.train.batch_size
    rng = torch.Generator().manual_seed(cfg.seed)
    order = index_batches(n, bs, lambda k: torch.randperm(k, generator=rng))
    batches = []
    for _ in range(steps):
        idx = next(order)
        ids = torch.cat([tokens["chosen_input_ids"][idx], tokens["rejected_input_ids"][idx]])
        attn = torch.cat([tokens["chosen_attention_mask"][idx], tokens["rejected_attention_mask"][idx]])
        ids, attn, _ = trim_padding(ids, attn, attn)
        if models.padding_free:  # the same packed rows as our loop: the comparison is of the step, not the layout
            packed = pack_batch(ids, attn, attn)
            batches.append({"input_ids": packed.input_ids, "position_ids": packed.position_ids})
        else:
            batches.append({"input_ids": ids, "attention_mask": attn})
    return batches


# --------------------------------------------------------------------------- measurements

def measure_throughput(args, sizes) -> dict:
    """Training pairs/s of our DPO loop and of TRL's DPOTrainer, alternating rounds, best of each side."""
    from alignbench.training.setup import prepare

    steps = sizes["steps"]
    cfg = compose(args, f"train.max_steps={steps}", "eval.every_n_steps=0", "eval.n_prompts=4",
                  "eval.max_new_tokens=4")
    prepared = prepare(cfg)  # models.load_models on the composed config; warms the SFT model, pairs, caches
    tokenizer, records = prepared.models.tokenizer, prepared.train_records
    sft = sft_model_path(cfg, prepared.models)
    from transformers import AutoModelForCausalLM

    ours, trl_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(sizes["rounds"]):
            ours.append(run_ours_loop(cfg))
            model = AutoModelForCausalLM.from_pretrained(sft, use_safetensors=True)
            trl_runs.append(run_trl(cfg, model, copy.deepcopy(tokenizer), records, steps, cfg.method.beta, tmp))
    best_ours = max(r["pairs_per_second"] for r in ours)
    best_trl = max(r["pairs_per_second"] for r in trl_runs)
    return {"dpo_throughput_vs_trl": best_ours / best_trl,
            "ours_pairs_per_second": best_ours, "trl_pairs_per_second": best_trl,
            "throughput_steps": steps, "throughput_batch_size": cfg.train.batch_size,
            "throughput_max_length": cfg.train.max_length, "n_train_pairs": len(records),
            "raw_ours": ours, "raw_trl": trl_runs, "_cfg": cfg}


def measure_step(args, cfg, sizes) -> dict:
    """Our DPO step time / a bare forward+backward step on the same batches, alternating rounds, best of each."""
    ours, bare = [], []
    for _ in range(sizes["rounds"]):
        ours.append(run_ours_loop(cfg)["step_seconds"])
        bare.append(bare_step_seconds(cfg, cfg.train.max_steps))
    return {"dpo_step_vs_forward_backward": min(ours) / min(bare),
            "ours_step_seconds": min(ours), "bare_step_seconds": min(bare),
            "raw_ours_step_seconds": ours, "raw_bare_step_seconds": bare}


def measure_sweep(args, sizes, main_cache: Path, scratch: Path) -> dict:
    """Trial k of our sweep, then TRL's run k, alternating (so a change in machine load hits both
    sides alike); our caches carry over from trial to trial exactly as in a sweep worker."""
    from alignbench.training.setup import prepare

    scratch_cache(main_cache, scratch)
    steps = sizes["sweep_steps"] or int(compose(args).train.max_steps)  # default: a default trial's budget
    extra = [f"train.max_steps={steps}", f"cache_dir={main_cache}"]
    prepared = prepare(compose(args, *extra))  # the same records and the SFT path for TRL (not timed)
    records, tokenizer = prepared.train_records, prepared.models.tokenizer
    sft = sft_model_path(compose(args, *extra), prepared.models)
    del prepared
    extra[-1] = f"cache_dir={scratch}"  # our sweep starts with cold reference and token caches
    ours, trl_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for beta in BETAS:
            cfg = compose(args, *extra, f"method.beta={beta}")
            ours.append(_our_trial(cfg, beta))
            trl_runs.append(_trl_trial(cfg, sft, tokenizer, records, steps, beta, tmp))
    ours_s = sum(r["seconds_without_eval"] for r in ours)
    trl_s = sum(r["wall_seconds"] for r in trl_runs)
    return {"sweep_speedup_vs_trl": trl_s / ours_s, "sweep_ours_seconds": ours_s, "sweep_trl_seconds": trl_s,
            "sweep_trials": len(BETAS), "sweep_steps_per_trial": steps, "sweep_eval": "excluded from both sides",
            "raw_sweep_ours": ours, "raw_sweep_trl": trl_runs}


def _our_trial(cfg, beta: float) -> dict:
    """One trial of our sweep (`training.run.train`), timed, with the evaluation time it included."""
    from alignbench.tracking.null import NullTracker
    from alignbench.training.run import train

    t0 = time.perf_counter()
    result = train(cfg, NullTracker())
    wall = time.perf_counter() - t0
    t = result.timings
    return {"beta": beta, "wall_seconds": wall, "eval_seconds": t["eval_seconds"],
            "setup_seconds": t["setup_seconds"], "ref_seconds": t["ref_seconds"],
            "train_seconds": t["train_seconds"], "seconds_without_eval": wall - t["eval_seconds"]}


def _trl_trial(cfg, sft: Path, tokenizer, records, steps: int, beta: float, out_dir: str) -> dict:
    """One TRL run as a TRL user's sweep does it: load the SFT model, then set up and train, timed."""
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(sft, use_safetensors=True)
    r = run_trl(cfg, model, copy.deepcopy(tokenizer), records, steps, beta, out_dir)
    r.update(beta=beta, wall_seconds=time.perf_counter() - t0)
    return r


def measure_overhead(args, sizes, workdir: Path) -> dict:
    """Share of a smoke trial's wall time outside training and evaluation, untracked and tracked in MLflow."""
    from alignbench.tracking import mlflow_runs as tracking
    from alignbench.tracking.null import NullTracker
    from alignbench.training.run import train

    cfg = compose(args, *sizes["smoke"])
    train(cfg, NullTracker())  # warm every cache this trial size uses
    result = train(cfg, NullTracker())
    t = result.timings
    share = 1 - (t["train_seconds"] + t["eval_seconds"]) / t["total_seconds"]
    out = {"overhead_share": share, "smoke_timings": dict(t), "smoke_overrides": sizes["smoke"]}
    uri = f"sqlite:///{workdir / 'bench_mlflow.db'}"
    with tracking.tracked_run("bench-warmup", uri=uri) as tracker:  # creates the store (not timed)
        tracker.log_metrics({"x": 1.0}, 0)
    t0 = time.perf_counter()
    with tracking.tracked_run("bench", uri=uri, tags={"method": "dpo"}) as tracker:
        result = train(cfg, tracker)
    wall = time.perf_counter() - t0
    t = result.timings
    out["overhead_share_tracked"] = 1 - (t["train_seconds"] + t["eval_seconds"]) / wall
    out["smoke_tracked_wall_seconds"] = wall
    return out


RSS_CHILD = """
import json, resource, sys
from alignbench.cli import main
try:
    main(sys.argv[1:])
finally:
    print("BENCH_RSS " + json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def measure_rss(args, cfg, workdir: Path, sizes) -> dict:
    """Peak RSS of `alignbench train tracking.enabled=false` at the default sizes, in a subprocess."""
    cmd = [sys.executable, "-c", RSS_CHILD, "train", *base_overrides(args), *sizes["rss"]]
    env = dict(os.environ, ALIGNBENCH_CACHE=str(Path(cfg.cache_dir).resolve()))
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RSS ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"peak-RSS subprocess failed ({proc.returncode}): {proc.stderr[-2000:]}")
    kb = json.loads(lines[-1].split(" ", 1)[1])
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024  # bytes on macOS, KiB on Linux
    return {"peak_rss_mb": kb * scale, "rss_command": "alignbench train " + " ".join(cmd[4:])}
