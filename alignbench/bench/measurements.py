"""Our side of `alignbench bench` and the measurements of one run or step: the composed configs
(fp32 on CPU, no tracking), our DPO loop's timings, a bare forward/backward step on the same
batches (eager or compiled), and the `measure_*` functions whose results are keys of bench.json
(see `alignbench.bench.main`; the sweeps are timed in `sweep_timing`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from alignbench.bench.sizes import QUICK
from alignbench.bench.trl_peer import run_trl, sft_model_path, write_pairs_file
from alignbench.data.batching import index_batches, trim_padding
from alignbench.data.tokenizing import tokenize_pairs
from alignbench.models.logps import pack_batch

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
    from alignbench.training.settings import run_settings
    from alignbench.training.setup import prepare

    settings = run_settings(cfg)
    prepared = prepare(settings)
    result = offline_loop(settings, prepared, NullTracker())
    t = result.timings
    return {"train_seconds": t["train_seconds"], "eval_seconds": t["eval_seconds"],
            "pairs_per_second": cfg.train.max_steps * cfg.train.batch_size / t["train_seconds"],
            "step_seconds": t["train_seconds"] / cfg.train.max_steps}


def bare_step_times(cfg, steps: int, compiled: bool = False) -> list[float]:
    """Seconds of each bare LM step (forward, cross-entropy, backward, AdamW) on our loop's
    concatenated batches; `compiled`: the policy under `torch.compile` (dynamic shapes, as packed
    rows change length every step), its first step paying for the compilation."""
    from alignbench.training.loop import make_optimizer
    from alignbench.training.settings import run_settings
    from alignbench.training.setup import prepare

    settings = run_settings(cfg)
    prepared = prepare(settings)
    batches = _loop_batches(cfg, prepared, steps)
    policy = prepared.models.policy
    policy.train()
    optimizer, _ = make_optimizer(settings.train, [p for p in policy.parameters() if p.requires_grad], settings.method.lr)
    forward = torch.compile(policy, dynamic=True) if compiled else policy
    times = []
    for inputs in batches:
        t0 = time.perf_counter()
        ids = inputs["input_ids"]
        logits = forward(**inputs, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 ids[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return times


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

def throughput_config(args, sizes):
    """The config of the throughput and step measurements: `sizes["steps"]` steps, a token evaluation."""
    return compose(args, f"train.max_steps={sizes['steps']}", "eval.every_n_steps=0", "eval.n_prompts=4",
                   "eval.max_new_tokens=4")


def measure_throughput(args, sizes) -> dict:
    """Training pairs/s of our DPO loop and of TRL's DPOTrainer, alternating rounds, best of each side."""
    from alignbench.training.settings import run_settings
    from alignbench.training.setup import prepare

    steps = sizes["steps"]
    cfg = throughput_config(args, sizes)
    prepared = prepare(run_settings(cfg))  # models.load_models on the composed config; warms the SFT model, pairs, caches
    records = prepared.train_records
    sft = sft_model_path(cfg, prepared.models)
    ours, trl_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        pairs = write_pairs_file(records, prepared.models.tokenizer, Path(tmp) / "pairs.jsonl")
        for _ in range(sizes["rounds"]):
            ours.append(run_ours_loop(cfg))
            trl_runs.append(run_trl(cfg, sft, pairs, Path(tmp) / "datasets", steps, cfg.method.beta, tmp))
    best_ours = max(r["pairs_per_second"] for r in ours)
    best_trl = max(r["pairs_per_second"] for r in trl_runs)
    return {"dpo_throughput_vs_trl": best_ours / best_trl,
            "ours_pairs_per_second": best_ours, "trl_pairs_per_second": best_trl,
            "throughput_steps": steps, "throughput_batch_size": cfg.train.batch_size,
            "throughput_max_length": cfg.train.max_length, "n_train_pairs": len(records),
            "raw_ours": ours, "raw_trl": trl_runs, "_cfg": cfg}


def measure_step(args, cfg, sizes) -> dict:
    """Our DPO step time / a bare eager forward+backward step on the same batches, alternating rounds,
    best of each. Our step runs as the loop does by default (`train.compile`)."""
    ours, bare = [], []
    for _ in range(sizes["rounds"]):
        ours.append(run_ours_loop(cfg)["step_seconds"])
        bare.append(sum(bare_step_times(cfg, cfg.train.max_steps)) / cfg.train.max_steps)
    return {"dpo_step_vs_forward_backward": min(ours) / min(bare),
            "ours_step_seconds": min(ours), "bare_step_seconds": min(bare),
            "raw_ours_step_seconds": ours, "raw_bare_step_seconds": bare}


SMOKE_REPEATS = 3  # measured smoke trials per side, after a warm-up trial: the median is reported


def measure_overhead(args, sizes, workdir: Path) -> dict:
    """Share of a smoke trial's wall time outside training and evaluation, untracked and inside an
    MLflow run, as a sweep worker's second and later trials see it: after one warm-up trial on each
    side (caches, the store opened), the median of `SMOKE_REPEATS`. Also the warm-up tracked trial's
    share, and `mlflow_record_seconds`: what the store alone takes to record one trial's params,
    tags and metrics (create the run, one batch, end it), the floor of the tracked overhead."""
    from statistics import median

    from alignbench.tracking.null import NullTracker
    from alignbench.training.run import train

    cfg = compose(args, *sizes["smoke"])
    record = NullTracker()
    train(cfg, record)  # warm every cache this trial size uses; keeps what a run logs
    untracked = [train(cfg, NullTracker()).timings for _ in range(SMOKE_REPEATS)]
    shares = [1 - (t["train_seconds"] + t["eval_seconds"]) / t["total_seconds"] for t in untracked]
    uri = bench_store(workdir)
    _record_seconds(NullTracker(), uri)  # the store and experiment made, as a sweep's workers find them
    first = _tracked_trial(cfg, uri)  # a sweep worker's first trial
    tracked = [_tracked_trial(cfg, uri) for _ in range(SMOKE_REPEATS)]
    records = [_record_seconds(record, uri) for _ in range(SMOKE_REPEATS)]
    at, tracked_at = _median_at(shares), _median_at([r["share"] for r in tracked])
    return {"overhead_share": shares[at], "smoke_timings": dict(untracked[at]), "smoke_overrides": sizes["smoke"],
            "overhead_share_tracked": tracked[tracked_at]["share"],
            "smoke_tracked_wall_seconds": tracked[tracked_at]["wall"],
            "smoke_tracked_timings": tracked[tracked_at]["timings"],
            "overhead_share_tracked_first_trial": first["share"],
            "smoke_untracked_extra_seconds": median(t["total_seconds"] - t["train_seconds"] - t["eval_seconds"]
                                                    for t in untracked),
            "smoke_tracked_extra_seconds": median(r["extra"] for r in tracked),
            "mlflow_record_seconds": median(records), "mlflow_record_ms_per_trial": 1e3 * median(records),
            "mlflow_record_entities": {"params": len(record.params), "tags": len(record.tags),
                                       "metrics": sum(len(m) for _, m in record.metrics)},
            "raw_overhead_share": shares, "raw_overhead_share_tracked": [r["share"] for r in tracked]}


def measure_default_overhead(args, workdir: Path) -> dict:
    """`overhead_share_tracked_default`: the tracked overhead share of one trial at the default budget
    (these bench arguments' config, no smoke overrides), 1 - (train + eval seconds) / the tracked
    block's wall time, after an untracked trial of the same size has warmed its caches (the
    evaluator's reference side), as a sweep's later trials find them."""
    from alignbench.training.run import train

    cfg = compose(args)
    train(cfg)  # untracked: warms this size's caches
    trial = _tracked_trial(cfg, bench_store(workdir))
    return {"overhead_share_tracked_default": trial["share"], "default_tracked_wall_seconds": trial["wall"],
            "default_tracked_extra_seconds": trial["extra"], "default_tracked_timings": trial["timings"]}


def bench_store(workdir: Path) -> str:
    """The bench's own MLflow store in its scratch folder, artifacts included: its experiments are made
    here with their artifact root beside the database (MLflow's default root is ./mlruns in the cwd)."""
    import mlflow

    uri = f"sqlite:///{workdir / 'bench_mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    for name in BENCH_EXPERIMENTS:
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name, artifact_location=(workdir / "mlruns" / name).as_uri())
    return uri


BENCH_EXPERIMENTS = ("bench", "bench-record")  # `_tracked_trial`'s and `_record_seconds`' runs


def _median_at(values: list) -> int:
    """The index of the median of an odd number of values (its trial's timings go with it)."""
    return sorted(range(len(values)), key=values.__getitem__)[len(values) // 2]


def _tracked_trial(cfg, uri: str) -> dict:
    """One smoke trial inside an MLflow run: its wall time (the whole tracked block) and share."""
    from alignbench.tracking import mlflow_runs as tracking
    from alignbench.training.run import train

    t0 = time.perf_counter()
    with tracking.tracked_run("bench", uri=uri, tags={"method": cfg.method.name}) as tracker:
        timings = train(cfg, tracker).timings
    wall = time.perf_counter() - t0
    useful = timings["train_seconds"] + timings["eval_seconds"]
    return {"wall": wall, "share": 1 - useful / wall, "extra": wall - useful, "timings": dict(timings)}


def _record_seconds(record, uri: str) -> float:
    """Seconds to write what `record` (a NullTracker) kept into a new MLflow run, as a trial does:
    created, one batch at the end, ended. No training, no artifacts."""
    from alignbench.tracking import mlflow_runs as tracking

    t0 = time.perf_counter()
    with tracking.tracked_run("bench-record", uri=uri, tags={"method": "dpo"}) as tracker:
        tracker.log_params(record.params)
        tracker.set_tags(record.tags)
        for step, metrics in record.metrics:
            tracker.log_metrics(metrics, step)
    return time.perf_counter() - t0


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
