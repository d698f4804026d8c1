"""`torch.compile` against eager for the policy's forward+backward, measured by `alignbench bench`:
the same packed batches as our DPO loop, the compiled policy with dynamic shapes (packed rows change
length every step), the compilation counted in a default run's total."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from alignbench.bench.measurements import bare_step_times, compose


def measure_compile(args, cfg, sizes, workdir: Path) -> dict:
    """Eager and compiled bare steps, alternating rounds. A default run's steps (`train.max_steps` of
    the default config) are projected from each side's steady step (median after the first), the
    compiled side adding its first step's compilation: `compile_speedup_default_run` > 1 means
    compiling pays over a default run. Inductor's kernel cache starts empty in `workdir` (a new
    machine's first run; a shared one could also be half-written by another process)."""
    import torch._inductor.config

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(workdir / "inductor")
    torch._inductor.config.compile_threads = 1  # in this process: a worker pool started earlier keeps the old cache dir
    steps = cfg.train.max_steps
    eager, compiled = [], []
    for _ in range(sizes["rounds"]):
        eager.append(bare_step_times(cfg, steps))
        compiled.append(bare_step_times(cfg, steps, compiled=True))
    eager_step = min(statistics.median(t[1:]) for t in eager)
    compiled_step = min(statistics.median(t[1:]) for t in compiled)
    compile_seconds = compiled[0][0] - eager_step  # the first (cold) compiled step less a step's work
    default_steps = int(compose(args).train.max_steps)
    eager_run = default_steps * eager_step
    compiled_run = compile_seconds + default_steps * compiled_step
    return {"compile_speedup_default_run": eager_run / compiled_run,
            "compiled_step_vs_eager": compiled_step / eager_step,
            "eager_step_seconds": eager_step, "compiled_step_seconds": compiled_step,
            "compile_seconds": compile_seconds, "compile_default_run_steps": default_steps,
            "raw_eager_step_seconds": eager, "raw_compiled_step_seconds": compiled}
