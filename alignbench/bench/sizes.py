"""Run sizes for `alignbench bench` and the test suite, in one place: the small `--quick` sizes
(`QUICK`), a whole quick run (`QUICK_RUN`, the tests' FAST), the smoke sweep's trial size, and
the step/round budget of each measurement (`sizes_for`)."""

from __future__ import annotations

# A small SFT model and task, small batches and evaluation: `bench --quick` adds a few steps per measurement.
QUICK = [
    "model.sft.steps=60", "model.sft.n_examples=1000", "model.sft.batch_size=32",
    "data.n_train_prompts=160", "data.n_eval_prompts=64",
    "train.batch_size=8", "train.warmup_steps=2", "train.log_every=2",
    "eval.n_prompts=24", "eval.max_new_tokens=16", "eval.n_pref_pairs=16",
]

# QUICK with a 6-step budget and one mid-run evaluation: a whole run on the built-in task in seconds.
QUICK_RUN = [*QUICK, "train.max_steps=6", "eval.every_n_steps=3"]


def smoke_overrides() -> list[str]:
    """The per-trial budget of `sweeps/smoke.yaml` (the smoke sweep's trial size)."""
    from omegaconf import OmegaConf

    from alignbench.config import CONF_DIR

    path = CONF_DIR.parent / "sweeps" / "smoke.yaml"
    if path.exists():
        return [str(o) for o in OmegaConf.load(path).get("overrides", [])]
    return list(QUICK_RUN)


def sizes_for(args) -> dict:
    """Steps, sweep steps, rounds, and the peak-RSS and smoke-trial overrides for this invocation."""
    # The peak-RSS run keeps the default model, data, batch and eval sizes (memory does not grow with
    # the step count), with fewer steps and only the final evaluation to save time.
    if args.quick:
        s = {"steps": 6, "sweep_steps": 4, "rounds": 1, "rss": ["train.max_steps=4", "eval.every_n_steps=0"]}
    else:
        s = {"steps": 60, "sweep_steps": None, "rounds": 2, "rss": ["train.max_steps=20", "eval.every_n_steps=0"]}
    s["real_steps"] = 2 if args.quick else None  # None: the real model's budget (train.max_steps there)
    s["smoke"] = smoke_overrides()
    if args.steps:
        s["steps"] = args.steps
    if args.sweep_steps:
        s["sweep_steps"] = args.sweep_steps
    if args.rounds:
        s["rounds"] = args.rounds
    return s
