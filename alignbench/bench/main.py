"""`alignbench bench`: speed of alignbench's offline DPO loop against TRL's DPOTrainer, side by side.

Everything runs in one process on the same machine, model, data and thread count (1 by
default, `--threads`), so the ratios compare like with like even on a noisy shared machine
(absolute numbers do not). Uses the cache in `cache_dir` (the SFT model and task pairs are made
there on first use); the reference-side caches of the sweep start cold in a scratch dir.
Writes `bench.json` in the working directory and prints a table.

Measurements (keys of bench.json):

- ``dpo_throughput_vs_trl``: training pairs/s of `train.offline_loop` (DPO) / pairs/s of
  `trl.DPOTrainer` on the built-in SFT model and task pairs; same batch size, max length,
  precision (fp32), optimiser (AdamW, warm-up then constant lr, clipping 1.0), thread count,
  logging interval; both with the reference log-probs precomputed before timing. TRL is timed
  from `on_train_begin` to `on_train_end` (its training steps only), ours is the loop's own
  `train_seconds` (steps only, no evaluation). Rounds alternate ours/TRL; the best round of
  each side counts (the least disturbed by other processes), every round is kept in `raw`.
- ``sweep_speedup_vs_trl``: a 4-trial DPO beta sweep with alignbench (`train.train`, one trial
  after another, the caches cold before the first: the reference log-probs are computed once,
  then reused) vs four `DPOTrainer` runs one after another (each loads the SFT model,
  tokenises the pairs and precomputes the reference log-probs, as a TRL user's sweep does).
  Trials alternate (ours k, TRL k, ours k+1, ...) so load changes hit both sides alike; the
  trial budget is `train.max_steps` (default 120; `--sweep-steps` to change).
  Evaluation is excluded from both sides: ours subtracts each trial's `eval_seconds`, TRL runs
  no evaluation. Our set-up still builds the evaluator's cached reference side on the first
  trial, which TRL has no counterpart for, so the ratio is conservative for alignbench.
- ``dpo_step_vs_forward_backward``: our DPO step time (the loop's `train_seconds / max_steps`)
  / a bare forward + cross-entropy + backward + AdamW step of the same policy on the same
  concatenated (chosen ++ rejected, trimmed) batches, in the same layout (packed rows when
  `train.padding_free` is on, as by default). Rounds alternate; best of each side.
- ``overhead_share``: 1 - (train_seconds + eval_seconds) / total_seconds of a smoke-sized trial
  on a warm cache (`RunResult.timings`); ``overhead_share_tracked`` is the same with an MLflow
  run around the trial and the wall time of the whole tracked block as the denominator.
- ``peak_rss_mb``: peak resident memory (`resource.getrusage`) of a subprocess running
  `alignbench train tracking.enabled=false` with the default model, data, batch and eval sizes.

TRL is imported here only (it is a test/benchmark dependency, never used by the core package).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

BETAS = (0.05, 0.1, 0.2, 0.4)

# --quick: the test suite's FAST sizes (a small SFT model and task), a few steps per measurement.
QUICK = [
    "model.sft.steps=60", "model.sft.n_examples=1000", "model.sft.batch_size=32",
    "data.n_train_prompts=160", "data.n_eval_prompts=64",
    "train.batch_size=8", "train.warmup_steps=2", "train.log_every=2",
    "eval.n_prompts=24", "eval.max_new_tokens=16", "eval.n_pref_pairs=16",
]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="alignbench bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (about a minute): for tests and smoke checks")
    p.add_argument("--out", default="bench.json", help="where to write the results (default: ./bench.json)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per throughput/step measurement")
    p.add_argument("--sweep-steps", type=int, default=None, help="optimiser steps per sweep trial")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds per side-by-side measurement")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for both sides (default 1: on a shared machine, other processes stall "
                        "multi-threaded ops at every barrier, which swamps the comparison; 0 = torch's default)")
    p.add_argument("--skip-rss", action="store_true", help="skip the peak-memory subprocess")
    p.add_argument("overrides", nargs="*", help="hydra overrides applied to every alignbench config")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- configs and caches

def base_overrides(args) -> list[str]:
    over = ["tracking.enabled=false", "precision=fp32", "device=cpu"]
    if args.quick:
        over += QUICK
    return over + list(args.overrides)


def compose(args, *extra: str):
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


# --------------------------------------------------------------------------- TRL side

def trl_dataset(records, tokenizer):
    """The same pairs as TRL's standard text format: [BOS] in the prompt text, EOS added by TRL."""
    from datasets import Dataset

    bos = tokenizer.bos_token or ""
    return Dataset.from_list([{"prompt": bos + r.prompt, "chosen": r.chosen, "rejected": r.rejected}
                              for r in records])


def trl_config(cfg, out_dir: str, max_steps: int, beta: float):
    from trl import DPOConfig

    t = cfg.train
    return DPOConfig(
        output_dir=out_dir, report_to=[], save_strategy="no", use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False,  # TRL's default is on; ours is off and the model is tiny
        dataloader_num_workers=0, disable_tqdm=True, seed=cfg.seed,
        max_length=t.max_length, per_device_train_batch_size=t.batch_size, max_steps=max_steps,
        learning_rate=cfg.method.lr, beta=beta, loss_type=["sigmoid"], label_smoothing=cfg.method.label_smoothing,
        lr_scheduler_type="constant_with_warmup", warmup_steps=t.warmup_steps, weight_decay=t.weight_decay,
        adam_beta1=t.adam_betas[0], adam_beta2=t.adam_betas[1], max_grad_norm=t.max_grad_norm,
        optim="adamw_torch", logging_steps=t.log_every,
        precompute_ref_log_probs=True, precompute_ref_batch_size=cfg.eval.batch_size,
    )


def trl_train_timer():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        begin = end = None

        def on_train_begin(self, args, state, control, **kw):
            self.begin = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            self.end = time.perf_counter()

    return Timer()


def run_trl(cfg, model, tokenizer, records, max_steps: int, beta: float, out_dir: str) -> dict:
    """One TRL DPOTrainer run; seconds of set-up (tokenise + reference precompute) and of training."""
    from trl import DPOTrainer

    timer = trl_train_timer()
    t0 = time.perf_counter()
    trainer = DPOTrainer(model=model, args=trl_config(cfg, out_dir, max_steps, beta),
                         train_dataset=trl_dataset(records, tokenizer), processing_class=tokenizer,
                         callbacks=[timer])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # TRL still logs every logging_steps, into trainer.state
    t1 = time.perf_counter()
    trainer.train()
    t2 = time.perf_counter()
    train_s = timer.end - timer.begin
    return {"setup_seconds": t1 - t0, "train_seconds": train_s, "total_seconds": t2 - t0,
            "pairs_per_second": max_steps * cfg.train.batch_size / train_s}


def sft_model_path(cfg, models) -> Path:
    from alignbench import cache

    return cache.entry_dir(cfg.cache_dir, "sft", models.key)


# --------------------------------------------------------------------------- our side

def run_ours_loop(cfg) -> dict:
    """`prepare` (warm cache) then `offline_loop`; the loop's own timings."""
    from alignbench.training.run import NullTracker, offline_loop, prepare

    prepared = prepare(cfg)
    result = offline_loop(cfg, prepared, NullTracker())
    t = result.timings
    return {"train_seconds": t["train_seconds"], "eval_seconds": t["eval_seconds"],
            "pairs_per_second": cfg.train.max_steps * cfg.train.batch_size / t["train_seconds"],
            "step_seconds": t["train_seconds"] / cfg.train.max_steps}


def bare_step_seconds(cfg, steps: int) -> float:
    """A bare LM step (forward, cross-entropy, backward, AdamW) on our loop's concatenated batches."""
    from alignbench.data import preference_data as data
    from alignbench.models.logps import pack_batch
    from alignbench.data.batching import index_batches, trim_padding
    from alignbench.training.run import make_optimizer, prepare

    prepared = prepare(cfg)
    models = prepared.models
    tokens = data.tokenize_pairs(prepared.train_records, models.tokenizer, cfg.train.max_length,
                                 cfg.train.max_prompt_length)
    n, bs = len(prepared.train_records), cfg.train.batch_size
    rng = torch.Generator().manual_seed(cfg.seed)
    order = index_batches(n, bs, lambda k: torch.randperm(k, generator=rng))
    batches = []
    for _ in range(steps):  # the loop's own batch order, padding and trimming, built before timing
        idx = next(order)
        ids = torch.cat([tokens["chosen_input_ids"][idx], tokens["rejected_input_ids"][idx]])
        attn = torch.cat([tokens["chosen_attention_mask"][idx], tokens["rejected_attention_mask"][idx]])
        ids, attn, _ = trim_padding(ids, attn, attn)
        if models.padding_free:  # the same packed rows as our loop: the comparison is of the step, not the layout
            packed = pack_batch(ids, attn, attn)
            batches.append({"input_ids": packed.input_ids, "position_ids": packed.position_ids})
        else:
            batches.append({"input_ids": ids, "attention_mask": attn})
    policy = models.policy
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


# --------------------------------------------------------------------------- measurements

def measure_throughput(args, sizes) -> dict:
    from alignbench.training.run import prepare

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
    from transformers import AutoModelForCausalLM

    from alignbench.training.run import NullTracker, prepare, train

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
            t0 = time.perf_counter()
            result = train(cfg, NullTracker())
            wall = time.perf_counter() - t0
            t = result.timings
            ours.append({"beta": beta, "wall_seconds": wall, "eval_seconds": t["eval_seconds"],
                         "setup_seconds": t["setup_seconds"], "ref_seconds": t["ref_seconds"],
                         "train_seconds": t["train_seconds"], "seconds_without_eval": wall - t["eval_seconds"]})
            t0 = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(sft, use_safetensors=True)
            r = run_trl(cfg, model, copy.deepcopy(tokenizer), records, steps, beta, tmp)
            r.update(beta=beta, wall_seconds=time.perf_counter() - t0)
            trl_runs.append(r)
    ours_s = sum(r["seconds_without_eval"] for r in ours)
    trl_s = sum(r["wall_seconds"] for r in trl_runs)
    return {"sweep_speedup_vs_trl": trl_s / ours_s, "sweep_ours_seconds": ours_s, "sweep_trl_seconds": trl_s,
            "sweep_trials": len(BETAS), "sweep_steps_per_trial": steps, "sweep_eval": "excluded from both sides",
            "raw_sweep_ours": ours, "raw_sweep_trl": trl_runs}


def measure_overhead(args, sizes, workdir: Path) -> dict:
    from alignbench.tracking import mlflow_runs as tracking
    from alignbench.training.run import NullTracker, train

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


# --------------------------------------------------------------------------- main

def smoke_overrides() -> list[str]:
    """The per-trial budget of `sweeps/smoke.yaml` (the smoke sweep's trial size)."""
    from omegaconf import OmegaConf

    from alignbench.config import CONF_DIR

    path = CONF_DIR.parent / "sweeps" / "smoke.yaml"
    if path.exists():
        return [str(o) for o in OmegaConf.load(path).get("overrides", [])]
    return QUICK + ["train.max_steps=6", "eval.every_n_steps=3"]


def sizes_for(args) -> dict:
    # The peak-RSS run keeps the default model, data, batch and eval sizes (memory does not grow with
    # the step count), with fewer steps and only the final evaluation to save time.
    if args.quick:
        s = {"steps": 6, "sweep_steps": 4, "rounds": 1, "rss": ["train.max_steps=4", "eval.every_n_steps=0"]}
    else:
        s = {"steps": 60, "sweep_steps": None, "rounds": 2, "rss": ["train.max_steps=20", "eval.every_n_steps=0"]}
    s["smoke"] = smoke_overrides()
    if args.steps:
        s["steps"] = args.steps
    if args.sweep_steps:
        s["sweep_steps"] = args.sweep_steps
    if args.rounds:
        s["rounds"] = args.rounds
    return s


def machine_info() -> dict:
    import transformers
    import trl

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
            "transformers_version": transformers.__version__, "trl_version": trl.__version__,
            "python_version": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def print_table(res: dict) -> None:
    rows = [
        ("DPO throughput vs TRL (pairs/s ratio)", res["dpo_throughput_vs_trl"], ">= 1.0",
         f"{res['ours_pairs_per_second']:.0f} vs {res['trl_pairs_per_second']:.0f} pairs/s"),
        ("4-trial beta sweep speed-up vs TRL", res["sweep_speedup_vs_trl"], ">= 2",
         f"{res['sweep_ours_seconds']:.1f} s vs {res['sweep_trl_seconds']:.1f} s (eval excluded)"),
        ("DPO step / bare forward+backward", res["dpo_step_vs_forward_backward"], "<= 1.15",
         f"{1e3 * res['ours_step_seconds']:.1f} ms vs {1e3 * res['bare_step_seconds']:.1f} ms"),
        ("overhead share of a smoke trial", res["overhead_share"], "<= 0.15",
         f"tracked in MLflow: {res['overhead_share_tracked']:.3f}"),
        ("peak RSS of a default train run (MB)", res["peak_rss_mb"], "-", ""),
    ]
    print(f"\n{'measurement':<40} {'value':>9}  {'target':<8} detail")
    for name, value, target, detail in rows:
        print(f"{name:<40} {value:>9.3f}  {target:<8} {detail}")
    m = res["machine"]
    print(f"machine: {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, torch {m['torch_version']}, "
          f"trl {m['trl_version']}; total {res['bench_seconds']:.0f} s\n")


def _finite_numbers(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from alignbench.process import quiet_libraries

    quiet_libraries()
    import datasets

    datasets.disable_caching()
    if args.threads:  # both sides run in this process (and the RSS subprocess gets threads=N)
        torch.set_num_threads(args.threads)
        args.overrides.append(f"threads={args.threads}")
    t_start = time.perf_counter()
    sizes = sizes_for(args)
    res: dict = {"quick": args.quick, "machine": machine_info()}
    with tempfile.TemporaryDirectory(prefix="alignbench-bench-") as tmp:
        tmp = Path(tmp)
        print("bench: throughput, ours vs TRL ...", flush=True)
        tp = measure_throughput(args, sizes)
        cfg = tp.pop("_cfg")
        res.update(tp)
        print("bench: DPO step vs bare forward+backward ...", flush=True)
        res.update(measure_step(args, cfg, sizes))
        print("bench: 4-trial beta sweep, ours vs TRL ...", flush=True)
        res.update(measure_sweep(args, sizes, Path(cfg.cache_dir), tmp / "cache"))
        print("bench: overhead share of a smoke trial ...", flush=True)
        res.update(measure_overhead(args, sizes, tmp))
        if args.skip_rss:
            res["peak_rss_mb"] = float("nan")
        else:
            print("bench: peak RSS of a default train run ...", flush=True)
            res.update(measure_rss(args, cfg, tmp, sizes))
    res["bench_seconds"] = time.perf_counter() - t_start
    res["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    res = _finite_numbers(res)
    Path(args.out).write_text(json.dumps(res, indent=2, default=str))
    print_table(res)
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
