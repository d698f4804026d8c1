"""``ddp_throughput_2proc_vs_1proc``: DPO training pairs/s of one trial on 2 CPU processes (DDP over
gloo, `torchrun --nproc_per_node 2`) against the same trial on 1 process, at the same global batch,
seed and budget, each with `--threads` torch threads per process. Information, not a target: on a
machine with fewer free cores than processes it is below 2.

Both run `alignbench train` in a subprocess of the scratch directory, recorded in a scratch MLflow
store; pairs/s is the run's `train/pairs_per_second` (rank 0's training seconds, evaluation excluded).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alignbench.bench.measurements import base_overrides

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _pairs_per_second(uri: str, name: str) -> float:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("bench-ddp").experiment_id],
                               filter_string=f"attributes.run_name = '{name}'")
    return run.data.metrics["train/pairs_per_second"]


def measure_ddp(args, cfg, sizes, workdir: Path) -> dict:
    """1 process, then 2, on the same config; their pairs/s and the ratio."""
    uri = f"sqlite:///{(workdir / 'ddp.db').resolve()}"
    threads = args.threads or 1
    common = [*base_overrides(args), f"train.max_steps={sizes['steps']}", "eval.every_n_steps=0",
              "tracking.enabled=true", f"tracking.uri={uri}", "tracking.experiment=bench-ddp"]
    env = dict(os.environ, ALIGNBENCH_CACHE=str(Path(cfg.cache_dir).resolve()))
    env.pop("MLFLOW_TRACKING_URI", None)
    runs = {"1proc": [sys.executable, "-m", "alignbench.cli", "train", *common, f"threads={threads}"],
            "2proc": [*TORCHRUN, "--nproc_per_node", "2", "-m", "alignbench.cli", "train", *common,
                      f"threads={2 * threads}"]}  # `threads` is the trial's: split, `threads` per process
    out = {}
    for name, cmd in runs.items():
        proc = subprocess.run([*cmd, f"tracking.run_name=ddp-{name}"], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"ddp {name} run failed ({proc.returncode}): {proc.stderr[-2000:]}")
        out[f"ddp_pairs_per_second_{name}"] = _pairs_per_second(uri, f"ddp-{name}")
    out["ddp_throughput_2proc_vs_1proc"] = out["ddp_pairs_per_second_2proc"] / out["ddp_pairs_per_second_1proc"]
    out["ddp_threads_per_process"] = threads
    return out
