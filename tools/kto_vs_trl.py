"""Our KTO loop and TRL's `KTOTrainer` on the same built-in pairs, SFT model, seed and settings, side by
side: per logged step the loss, z0 (the KL estimate) and the mean implicit reward beta * log-ratio of the
desirable and undesirable examples; then both final policies through our evaluator (sampled KL, win rate).

    PYTHONPATH=. python tools/kto_vs_trl.py --seed 3 --steps 80 [--threads 1] [override ...]

Overrides are config overrides (`method.lr=2e-4`). TRL samples its batches in file order ("sequential",
its KTO default, which the KL pairing needs), so the file holds the unpaired examples shuffled with the
seed: the same examples and settings as ours, not the same batches.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import torch


def our_trace(cfg) -> tuple[list[dict], dict]:
    from alignbench.tracking.null import NullTracker
    from alignbench.training.run import train

    tracker = NullTracker()
    result = train(cfg, tracker)
    keep = ("train/loss", "train/kl_z0", "train/reward_desirable", "train/reward_undesirable", "train/grad_norm")
    rows = [{"step": s, **{k: m[k] for k in keep if k in m}} for s, m in tracker.metrics if "train/loss" in m]
    return rows, result.metrics


def trl_trace(cfg, prepared, out_dir: Path) -> tuple[list[dict], object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    from alignbench.bench.trl_peer import load_pairs, sft_model_path
    from alignbench.data.preparing import to_unpaired

    tok = prepared.models.tokenizer
    examples = to_unpaired(prepared.train_records)
    random.Random(cfg.seed).shuffle(examples)
    path = out_dir / "unpaired.jsonl"
    with open(path, "w") as f:
        for e in examples:
            f.write(json.dumps({"prompt": (tok.bos_token or "") + e.prompt, "completion": e.completion,
                                "label": bool(e.desirable)}) + "\n")
    sft = sft_model_path(cfg, prepared.models)
    model = AutoModelForCausalLM.from_pretrained(sft, use_safetensors=True)
    t = cfg.train
    args = KTOConfig(output_dir=str(out_dir / "trl"), report_to=[], save_strategy="no", use_cpu=True, bf16=False,
                     fp16=False, gradient_checkpointing=False, dataloader_num_workers=0, disable_tqdm=True,
                     seed=cfg.seed, max_length=t.max_length, per_device_train_batch_size=2 * t.batch_size,
                     max_steps=t.max_steps, learning_rate=cfg.method.lr, beta=cfg.method.beta,
                     desirable_weight=cfg.method.desirable_weight, undesirable_weight=cfg.method.undesirable_weight,
                     lr_scheduler_type="constant_with_warmup", warmup_steps=t.warmup_steps,
                     weight_decay=t.weight_decay, adam_beta1=t.adam_betas[0], adam_beta2=t.adam_betas[1],
                     max_grad_norm=t.max_grad_norm, optim="adamw_torch", logging_steps=t.log_every,
                     precompute_ref_log_probs=True)
    trainer = KTOTrainer(model=model, args=args, train_dataset=load_pairs(path, out_dir / "datasets"),
                         processing_class=AutoTokenizer.from_pretrained(sft))
    trainer.train()
    names = {"train/loss": "loss", "train/kl_z0": "kl", "train/reward_desirable": "rewards/chosen",
             "train/reward_undesirable": "rewards/rejected", "train/grad_norm": "grad_norm"}
    rows = [{"step": int(h["step"]), **{ours: float(h[theirs]) for ours, theirs in names.items() if theirs in h}}
            for h in trainer.state.log_history if "loss" in h]
    return rows, trainer.model


def main(argv: list[str]) -> None:
    from alignbench.config import compose
    from alignbench.training.settings import run_settings
    from alignbench.training.setup import prepare

    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("overrides", nargs="*")
    a = parser.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = compose(["method=kto", f"seed={a.seed}", "eval.split=test", f"train.max_steps={a.steps}",
                   "eval.every_n_steps=0", "train.save_policy=false", "tracking.enabled=false", *a.overrides])
    ours, our_metrics = our_trace(cfg)
    prepared = prepare(run_settings(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        theirs, model = trl_trace(cfg, prepared, Path(tmp))
    model.eval()
    trl_metrics = prepared.evaluator.evaluate(model).metrics
    print("step | ours: loss z0 r_desirable r_undesirable | TRL: loss z0 r_desirable r_undesirable")
    by_step = {r["step"]: r for r in theirs}
    for r in ours:
        o = by_step.get(r["step"], {})
        cells = [f"{x:.3f}" if isinstance(x, float) else "-" for x in
                 (r.get("train/loss"), r.get("train/kl_z0"), r.get("train/reward_desirable"),
                  r.get("train/reward_undesirable"), o.get("train/loss"), o.get("train/kl_z0"),
                  o.get("train/reward_desirable"), o.get("train/reward_undesirable"))]
        print(f"{r['step']:4d} | {' '.join(cells[:4])} | {' '.join(cells[4:])}")
    for name, m in (("ours", our_metrics), ("TRL", trl_metrics)):
        print(f"{name} at step {a.steps}: win rate {m['eval/win_rate']:.3f} [{m['eval/win_rate_ci_low']:.3f}, "
              f"{m['eval/win_rate_ci_high']:.3f}], sampled KL {m['eval/kl']:.1f} nats/seq, "
              f"gold {m.get('eval/gold_reward', float('nan')):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
