"""`alignbench bench`: speed of alignbench's offline DPO loop against TRL's DPOTrainer, side by side.

Everything runs in one process on the same machine, model, data and thread count (1 by
default, `--threads`), so the ratios compare like with like even on a noisy shared machine
(absolute numbers do not). Uses the cache in `cache_dir` (the SFT model and task pairs are made
there on first use); the reference-side caches of the sweep start cold in a scratch dir, for
both sides. Writes `bench.json` in the working directory and prints a table. Needs TRL (the
`bench` extra); without it, one line and exit status 2.

Measurements (keys of bench.json):

- ``dpo_throughput_vs_trl``: training pairs/s of `training.offline.offline_loop` (DPO) / pairs/s of
  `trl.DPOTrainer` on the built-in SFT model and task pairs; same batch size, max length,
  precision (fp32), optimiser (AdamW, warm-up then constant lr, clipping 1.0), thread count,
  logging interval; both with the reference log-probs precomputed before timing. TRL is timed
  from `on_train_begin` to `on_train_end` (its training steps only), ours is the loop's own
  `train_seconds` (steps only, no evaluation). Rounds alternate ours/TRL; the best round of
  each side counts (the least disturbed by other processes), every round is kept in `raw`.
- ``sweep_speedup_vs_trl``: a 4-trial DPO beta sweep with alignbench (`training.run.train`, one trial
  after another) vs four `DPOTrainer` runs one after another, each as its user runs it: load the
  SFT model, load the pairs file with `datasets.load_dataset` (caching on), set up, train. Both
  sides start with cold caches and keep them across trials: ours computes the reference
  log-probs once and reuses them; TRL's tokenised pairs and reference log-probs are `datasets`
  cache hits from its second run on (``trl_reference_cache_hits``, = trials - 1 when TRL's cache
  worked). Trials alternate (ours k, TRL k, ours k+1, ...) so load changes hit both sides alike;
  the trial budget is `train.max_steps` (default 120; `--sweep-steps` to change). Evaluation is
  excluded from both sides: ours subtracts each trial's `eval_seconds`, TRL runs none. Our set-up
  still builds the evaluator's cached reference side on the first trial, which TRL has no
  counterpart for.
- ``dpo_step_vs_forward_backward``: our DPO step time (the loop's `train_seconds / max_steps`)
  / a bare eager forward + cross-entropy + backward + AdamW step of the same policy on the same
  concatenated (chosen ++ rejected, trimmed) batches, in the same layout (packed rows when
  `train.padding_free` is on, as by default). Rounds alternate; best of each side.
- ``compile_speedup_default_run``: `torch.compile` (dynamic shapes) of that bare step against eager,
  over a default run's steps with the compilation counted (`compiled_step_vs_eager` per step).
  Not with `--quick` unless `--compile on` (inductor compiles for about a minute whatever the
  size): its keys are then NaN.
- ``overhead_share``: 1 - (train_seconds + eval_seconds) / total_seconds of a smoke-sized trial
  on a warm cache (`RunResult.timings`); ``overhead_share_tracked`` is the same with an MLflow
  run around the trial and the wall time of the whole tracked block as the denominator. Each is
  the median of 3 trials after a warm-up one, as a sweep worker's later trials run;
  ``overhead_share_tracked_first_trial`` is the warm-up's (the store opened in the process), and
  ``mlflow_record_ms_per_trial`` (``mlflow_record_seconds``) what MLflow's store alone takes to
  record one trial's params, tags and metrics (``mlflow_record_entities``), the floor of the
  tracked overhead. ``overhead_share_tracked_default``: the same tracked share for one trial at
  the default budget (the config's sizes; `--quick`'s with `--quick`), after an untracked warm-up
  trial of that size.
- ``peak_rss_mb``: peak resident memory (`resource.getrusage`) of a subprocess running
  `alignbench train tracking.enabled=false` with the default model, data, batch and eval sizes.
- ``ddp_throughput_2proc_vs_1proc`` (``ddp_pairs_per_second_1proc``, ``_2proc``): DPO pairs/s of one
  trial on 2 CPU processes under torchrun (gloo) / on 1, same global batch (`ddp_throughput`); information.
  Not with `--quick` unless `--only ddp`.
- ``real_dpo_step_s``, ``real_dpo_throughput_vs_trl``, ``real_share_prompt_speedup`` (not with `--quick`
  unless `--only real`): DPO with LoRA on SmolLM2-135M-Instruct against TRL's DPOTrainer with peft, and
  our step with the prompt shared against scored apart (`real_model`; skipped, with ``real_skipped``,
  without `make real`).
- ``default_sweep_seconds`` (only with `--with-sweep`, ~10+ minutes): `alignbench sweep`, the
  default comparison, end to end with the SFT model cached (`--quick`: the smoke sweep).

`--only NAME,...` runs some of the measurements (`MEASUREMENTS`); bench.json then holds their keys only.

Here: the command line, the order of the measurements, bench.json and the table. The TRL side
is `trl_peer`, our side and the run/step measurements `measurements`, the sweeps `sweep_timing`,
`torch.compile` `compile_step`, the real model `real_model`, the sizes `sizes`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from alignbench.bench.sizes import sizes_for
from alignbench.bench.trl_peer import TRL_MISSING, trl_available

# NaN when the compile measurement is not run (`--compile`)
COMPILE_KEYS = ("compile_speedup_default_run", "compiled_step_vs_eager", "eager_step_seconds",
                "compiled_step_seconds", "compile_seconds")
# What `--only` picks from, in the order they run (`sweep_default` is `--with-sweep`'s).
MEASUREMENTS = ("throughput", "step", "compile", "sweep", "overhead", "overhead_default", "rss", "ddp", "real",
                "sweep_default")


def parse_args(argv):
    """The bench command line: sizes, budgets, threads, output path and hydra overrides."""
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
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="measure torch.compile against eager (auto: not with --quick, since inductor "
                        "compiles for about a minute whatever the size)")
    p.add_argument("--with-sweep", action="store_true",
                   help="also time the default comparison `alignbench sweep` end to end (~10+ minutes; "
                        "with --quick: the smoke sweep)")
    p.add_argument("--only", default=None, metavar="NAME,...",
                   help=f"run only these measurements, comma-separated: {', '.join(MEASUREMENTS)}")
    p.add_argument("overrides", nargs="*", help="hydra overrides applied to every alignbench config")
    args = p.parse_args(argv)
    only = [] if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in only if n not in MEASUREMENTS]
    if unknown or (args.only is not None and not only):
        from alignbench.process import fail

        fail(f"bench --only: unknown measurement {', '.join(unknown) or repr(args.only)} "
             f"(choose from {', '.join(MEASUREMENTS)})")
    args.only = set(only) or None
    return args


def wanted(args, name: str) -> bool:
    """Whether this invocation runs measurement `name` (`--only`, `--compile`, `--skip-rss`, `--with-sweep`)."""
    if args.only is not None:
        return name in args.only
    if name == "compile":
        return args.compile == "on" or (args.compile == "auto" and not args.quick)
    return {"rss": not args.skip_rss, "sweep_default": args.with_sweep, "real": not args.quick,
            "ddp": not args.quick}.get(name, True)


def machine_info() -> dict:
    """CPU count, torch threads, library versions and load: what the ratios were measured on."""
    import transformers
    import trl

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
            "transformers_version": transformers.__version__, "trl_version": trl.__version__,
            "python_version": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_model": _cpu_model(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _cpu_model() -> str | None:
    """The CPU's model name (Linux: /proc/cpuinfo), or None."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)


def table_rows(res: dict) -> list[tuple]:
    """(name, value, target, detail) of each headline measurement in `res` (`--only` leaves some out)."""
    rows = []
    if "dpo_throughput_vs_trl" in res:
        rows.append(("DPO throughput vs TRL (pairs/s ratio)", res["dpo_throughput_vs_trl"], ">= 2.0",
                     f"{res['ours_pairs_per_second']:.0f} vs {res['trl_pairs_per_second']:.0f} pairs/s"))
    if "sweep_speedup_vs_trl" in res:
        rows.append(("4-trial beta sweep speed-up vs TRL", res["sweep_speedup_vs_trl"], ">= 2.0",
                     f"{res['sweep_ours_seconds']:.1f} s vs {res['sweep_trl_seconds']:.1f} s (eval excluded); "
                     f"TRL reference cache hits {res['trl_reference_cache_hits']}/{res['sweep_trials'] - 1}"))
    if "dpo_step_vs_forward_backward" in res:
        rows.append(("DPO step / bare forward+backward", res["dpo_step_vs_forward_backward"], "<= 1.10",
                     f"{1e3 * res['ours_step_seconds']:.1f} ms vs {1e3 * res['bare_step_seconds']:.1f} ms (eager)"))
    if "compile_speedup_default_run" in res:
        rows.append(("torch.compile speed-up, default run", res["compile_speedup_default_run"], ">= 1.10",
                     "not measured (--compile on measures it)" if math.isnan(res["compile_seconds"]) else
                     f"compiled step {1e3 * res['compiled_step_seconds']:.1f} ms vs eager "
                     f"{1e3 * res['eager_step_seconds']:.1f} ms; compiling {res['compile_seconds']:.1f} s"))
    if "overhead_share" in res:
        rows += [("overhead share of a smoke trial", res["overhead_share"], "<= 0.10",
                  f"{1e3 * res['smoke_untracked_extra_seconds']:.0f} ms outside training and evaluation (median of 3)"),
                 ("  ... inside an MLflow run", res["overhead_share_tracked"], "-",
                  f"{1e3 * res['smoke_tracked_extra_seconds']:.0f} ms; first trial "
                  f"{res['overhead_share_tracked_first_trial']:.3f}"),
                 ("MLflow's record of one trial (ms)", res["mlflow_record_ms_per_trial"], "<= 40",
                  ", ".join(f"{v} {k}" for k, v in res["mlflow_record_entities"].items()))]
    if "overhead_share_tracked_default" in res:
        rows.append(("tracked overhead share, default trial", res["overhead_share_tracked_default"], "<= 0.02",
                     f"{res['default_tracked_extra_seconds']:.2f} s of {res['default_tracked_wall_seconds']:.1f} s"))
    if "peak_rss_mb" in res:
        rows.append(("peak RSS of a default train run (MB)", res["peak_rss_mb"], "-", ""))
    if "ddp_throughput_2proc_vs_1proc" in res:
        rows.append(("DPO pairs/s, 2 CPU processes (DDP) / 1", res["ddp_throughput_2proc_vs_1proc"], "info",
                     f"{res['ddp_pairs_per_second_2proc']:.1f} vs {res['ddp_pairs_per_second_1proc']:.1f} pairs/s"))
    if "real_dpo_throughput_vs_trl" in res:
        rows += [("real model: DPO+LoRA throughput vs TRL", res["real_dpo_throughput_vs_trl"], ">= 1.5",
                  f"{res['real_ours_pairs_per_second']:.2f} vs {res['real_trl_pairs_per_second']:.2f} pairs/s"),
                 ("real model: DPO+LoRA step (s)", res["real_dpo_step_s"], "-",
                  f"{res['real_batch_size']} pairs x {res['real_max_length']} tokens, LoRA r={res['real_lora_r']}"),
                 ("real model: prompt shared / apart", res["real_share_prompt_speedup"], "-",
                  f"prompt {res['real_shared_prefix_tokens']:.2f} of a pair's tokens")]
    elif "real_skipped" in res:
        rows.append(("real model: DPO+LoRA vs TRL", float("nan"), ">= 1.5", f"skipped: {res['real_skipped']}"))
    if "default_sweep_seconds" in res:
        rows.append(("default comparison sweep (s)", res["default_sweep_seconds"], "-", res["default_sweep_command"]))
    return rows


def print_table(res: dict) -> None:
    """Each headline measurement beside its target, then the machine line."""
    rows = table_rows(res)
    print(f"\n{'measurement':<40} {'value':>9}  {'target':<8} detail")
    for name, value, target, detail in rows:
        print(f"{name:<40} {value:>9.3f}  {target:<8} {detail}")
    m = res["machine"]
    print(f"machine: {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, torch {m['torch_version']}, "
          f"trl {m['trl_version']}; total {res['bench_seconds']:.0f} s\n")


def _without_private_keys(d: dict) -> dict:
    """The results without the "_"-prefixed values passed between measurements (the composed config)."""
    return {k: v for k, v in d.items() if not k.startswith("_")}


def main(argv: list[str] | None = None) -> dict:
    """Runs every measurement, writes bench.json (`--out`), prints the table; returns the results."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if not trl_available():
        from alignbench.process import fail

        fail(TRL_MISSING)
    _quiet_process(args)
    t_start = time.perf_counter()
    sizes = sizes_for(args)
    res: dict = {"quick": args.quick, "machine": machine_info()}
    res.update(_measure_all(args, sizes))
    res["bench_seconds"] = time.perf_counter() - t_start
    res["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    res = _without_private_keys(res)
    Path(args.out).write_text(json.dumps(res, indent=2, default=str))
    print_table(res)
    print(f"wrote {args.out}")
    return res


def _quiet_process(args) -> None:
    """No warnings or progress bars; both sides get `--threads` torch threads. The `datasets` cache
    stays on: TRL's reference log-prob cache lives in it."""
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from alignbench.process import quiet_libraries

    quiet_libraries()
    if args.threads:  # both sides run in this process (and the RSS subprocess gets threads=N)
        torch.set_num_threads(args.threads)
        args.overrides.append(f"threads={args.threads}")


def _measure_all(args, sizes: dict) -> dict:
    """Each measurement in turn, in a scratch directory (the sweep's cold caches, the MLflow store, the RSS run)."""
    from alignbench.bench.compile_step import measure_compile
    from alignbench.bench.ddp_throughput import measure_ddp
    from alignbench.bench.measurements import (measure_default_overhead, measure_overhead, measure_rss, measure_step,
                                               measure_throughput, throughput_config)
    from alignbench.bench.real_model import measure_real
    from alignbench.bench.sweep_timing import measure_default_sweep, measure_sweep

    res: dict = {}
    with tempfile.TemporaryDirectory(prefix="alignbench-bench-") as tmp:
        tmp = Path(tmp)
        cfg = None
        if wanted(args, "throughput"):
            print("bench: throughput, ours vs TRL ...", flush=True)
            tp = measure_throughput(args, sizes)
            cfg = tp.pop("_cfg")
            res.update(tp)
        cfg = cfg or throughput_config(args, sizes)
        if wanted(args, "step"):
            print("bench: DPO step vs bare forward+backward ...", flush=True)
            res.update(measure_step(args, cfg, sizes))
        if wanted(args, "compile"):
            print("bench: torch.compile vs eager ...", flush=True)
            res.update(measure_compile(args, cfg, sizes, tmp))
        elif args.only is None:
            res.update(dict.fromkeys(COMPILE_KEYS, float("nan")))
        if wanted(args, "sweep"):
            print("bench: 4-trial beta sweep, ours vs TRL ...", flush=True)
            res.update(measure_sweep(args, sizes, Path(cfg.cache_dir), tmp / "cache"))
        if wanted(args, "overhead"):
            print("bench: overhead share of a smoke trial ...", flush=True)
            res.update(measure_overhead(args, sizes, tmp))
        if wanted(args, "overhead_default"):
            print("bench: tracked overhead share of a default trial ...", flush=True)
            res.update(measure_default_overhead(args, tmp))
        if wanted(args, "rss"):
            print("bench: peak RSS of a default train run ...", flush=True)
            res.update(measure_rss(args, cfg, tmp, sizes))
        elif args.only is None:
            res["peak_rss_mb"] = float("nan")
        if wanted(args, "ddp"):
            print("bench: DPO on 2 CPU processes (torchrun, gloo) vs 1 ...", flush=True)
            res.update(measure_ddp(args, cfg, sizes, tmp))
        if wanted(args, "real"):
            print("bench: DPO with LoRA on SmolLM2-135M, ours vs TRL with peft ...", flush=True)
            res.update(measure_real(args, sizes))
        if wanted(args, "sweep_default"):
            print("bench: the default comparison sweep, end to end ...", flush=True)
            res.update(measure_default_sweep(args, Path(cfg.cache_dir), tmp))
    return res

if __name__ == "__main__":
    main()
