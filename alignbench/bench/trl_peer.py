"""The TRL peer of `alignbench bench`: the same pairs and training settings as our DPO loop, run
through `trl.DPOTrainer` and timed from `on_train_begin` to `on_train_end`. TRL is imported here
only (a test/benchmark dependency, never used by the core package)."""

from __future__ import annotations

import time
from pathlib import Path


def trl_dataset(records, tokenizer):
    """The same pairs as TRL's standard text format: [BOS] in the prompt text, EOS added by TRL."""
    from datasets import Dataset

    bos = tokenizer.bos_token or ""
    return Dataset.from_list([{"prompt": bos + r.prompt, "chosen": r.chosen, "rejected": r.rejected}
                              for r in records])


def trl_config(cfg, out_dir: str, max_steps: int, beta: float):
    """DPOConfig matching our run: batch, length, fp32 on CPU, AdamW, warm-up then constant lr, clipping."""
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
    """A callback that records when TRL's training steps begin and end."""
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
    """The cached built-in SFT model's directory: TRL loads its own copy from there."""
    from alignbench import cache

    return cache.entry_dir(cfg.cache_dir, "sft", models.key)
