"""The TRL peer of `alignbench bench`: the same pairs and training settings as our DPO loop, run
through `trl.DPOTrainer` the way a TRL user runs it, and timed from `on_train_begin` to
`on_train_end`. TRL is imported here only (a bench/test dependency, never used by the core package).

As a TRL user does, each run loads the pairs from a file on disk through `datasets.load_dataset`
with the `datasets` cache on, and its model with `from_pretrained`. TRL then caches its
tokenised data set and its precomputed reference log-probs under the data set's fingerprint
(and the model's hash): runs after the first on the same file and model are cache hits, which
`run_trl` reports as `reference_cache_hit` (no new cache file was written while it set up)."""

from __future__ import annotations

import json
import time
from pathlib import Path

TRL_MISSING = 'bench compares against TRL, which is not installed: pip install -e ".[bench]"'


def trl_available() -> bool:
    """Whether TRL imports (the `bench` extra is installed)."""
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


def write_pairs_file(records, tokenizer, path: Path, add_bos: bool = True) -> Path:
    """The pairs as a TRL user's .jsonl (standard text format): [BOS] in the prompt text unless
    `add_bos` is off (chat-templated prompts carry their own start markers), EOS added by TRL."""
    bos = (tokenizer.bos_token or "") if add_bos else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps({"prompt": bos + r.prompt, "chosen": r.chosen, "rejected": r.rejected}) + "\n")
    return path


def load_pairs(path: Path, cache_dir: Path):
    """The pairs file through `datasets.load_dataset` (caching on, its cache in `cache_dir`)."""
    import datasets

    datasets.enable_caching()
    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache_dir))


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
        # TRL's default "keep_start" filters the tokenised pairs with a lambda that holds this whole
        # config, so the data set's fingerprint, and with it the key of TRL's reference log-prob
        # cache, changes with beta or lr: no hit in a sweep. "keep_end" skips that filter. No pair
        # of the built-in task is longer than max_length (57 of 64 tokens at most), so no number changes.
        truncation_mode="keep_end",
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


def _cache_files(dataset) -> set[str]:
    """The .arrow files in the data set's cache directory (TRL's tokenised and reference caches land there)."""
    folders = {Path(f["filename"]).parent for f in dataset.cache_files}
    return {str(p) for d in folders for p in d.glob("*.arrow")}


def run_trl(cfg, model_path: Path, pairs_file: Path, datasets_cache: Path, max_steps: int, beta: float,
            out_dir: str, peft_config=None) -> dict:
    """One TRL DPOTrainer run as a TRL user runs it: load the model and tokenizer, load the pairs
    file, set up (tokenise, precompute or reuse the reference log-probs), train; with `peft_config`,
    LoRA adapters on the model (TRL's reference is then the model with its adapters off). Seconds of the
    loading, of the set-up and of the training steps, and whether the reference log-probs came
    from TRL's cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOTrainer

    timer = trl_train_timer()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_path, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dataset = load_pairs(pairs_file, datasets_cache)
    before = _cache_files(dataset)
    t1 = time.perf_counter()
    trainer = DPOTrainer(model=model, args=trl_config(cfg, out_dir, max_steps, beta), train_dataset=dataset,
                         processing_class=tokenizer, callbacks=[timer], peft_config=peft_config)
    trainer.remove_callback(PrinterCallback)  # TRL still logs every logging_steps, into trainer.state
    hit = _cache_files(dataset) == before
    t2 = time.perf_counter()
    trainer.train()
    t3 = time.perf_counter()
    train_s = timer.end - timer.begin
    return {"load_seconds": t1 - t0, "setup_seconds": t2 - t1, "train_seconds": train_s, "total_seconds": t3 - t0,
            "pairs_per_second": max_steps * cfg.train.batch_size / train_s, "reference_cache_hit": hit}


def sft_model_path(cfg, models) -> Path:
    """The cached built-in SFT model's directory: TRL loads its own copy from there."""
    from alignbench import cache

    return cache.entry_dir(cfg.cache_dir, "sft", models.key)
