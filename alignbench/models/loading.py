"""Policy, reference and tokenizer: the built-in tiny model (`builtin`, its SFT stage cached) or a hub model.

Hub models load through `from_pretrained` with safetensors only and `trust_remote_code` off
unless the config asks for it; LoRA adapters through peft, in which case the reference is the
same base model with the adapters disabled (no second copy in memory).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from alignbench import cache
from alignbench.models.builtin import build_tiny_model, sft_train, train_tokenizer
from alignbench.models.logps import packing_agrees

log = logging.getLogger(__name__)


@dataclass
class Models:
    policy: torch.nn.Module
    reference: torch.nn.Module | None  # None when LoRA: the reference is the policy with adapters off
    tokenizer: object
    key: str  # content key of the reference model: every cache of reference outputs uses it
    device: torch.device
    padding_free: bool = False  # score sequences packed several to a row (`logps.packed_sequence_logps`)

    @contextlib.contextmanager
    def reference_model(self):
        """The frozen reference, in eval mode, without gradients."""
        if self.reference is not None:
            with torch.no_grad():
                yield self.reference
            return
        was_training = self.policy.training
        self.policy.eval()
        with torch.no_grad(), self.policy.disable_adapter():
            yield self.policy
        self.policy.train(was_training)


def pick_device(cfg) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device=cuda but CUDA is not available")
    return torch.device("cuda")


def pick_dtype(cfg, device: torch.device) -> torch.dtype:
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def load_builtin(cfg, sft_examples: list[tuple[str, str]], corpus_id: str, device: torch.device):
    """The built-in model: tokenizer + SFT, cached under a key of everything that determines them."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    key = cache.content_key("tiny-sft-v2", cfg.model, corpus_id, cfg.task_seed, cfg.train.max_length)

    def write(path: Path):
        log.info("SFT stage: training the built-in model (cached afterwards under %s)", key)
        examples = sft_examples() if callable(sft_examples) else sft_examples  # built only on a miss
        texts = [p + r for p, r in examples]
        tokenizer = train_tokenizer(texts, cfg.model.vocab_size)
        model = build_tiny_model(cfg.model, tokenizer, cfg.task_seed)  # the reference model: fixed across training seeds
        stats = sft_train(model, tokenizer, examples, cfg.model.sft, cfg.train.max_length, device, cfg.task_seed)
        log.info("SFT done: loss %.3f in %.1fs", stats["sft/final_loss"], stats["sft/seconds"])
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        (path / "sft_stats.json").write_text(json.dumps(stats))

    path, hit = cache.cached(cfg.cache_dir, "sft", key, write)
    if hit:
        log.info("SFT stage: cache hit %s", path)
    if _LOADED.get("key") != key:  # a sweep worker reads the SFT model from disk once, then copies it
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
        _LOADED.clear()
        _LOADED.update(key=key, model=model.eval(), tokenizer=tokenizer)
    return copy.deepcopy(_LOADED["model"]), copy.deepcopy(_LOADED["tokenizer"]), key, path


_PACKING_AGREES: dict = {}  # (model key, device type) -> whether packed scoring equals padded
_LOADED: dict = {}  # the last built-in SFT model loaded in this process (~1 MB): key, model, tokenizer


# --------------------------------------------------------------------------- hub models

def load_hub(cfg, device, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trust = bool(cfg.model.get("trust_remote_code", False))
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=trust)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        cfg.model.path, dtype=dtype, use_safetensors=True, trust_remote_code=trust)
    key = cache.content_key("hub-v1", cfg.model.path, str(dtype), cfg.model.get("revision"))
    return model, tokenizer, key


def load_models(cfg, sft_examples=None, corpus_id: str = "") -> Models:
    """Policy + reference + tokenizer on the configured device (before any preference training).

    `sft_examples`: (prompt, response) pairs, or a callable returning them (called only when the
    SFT stage actually runs, so a cache hit does not build the corpus)."""
    device = pick_device(cfg)
    if callable(sft_examples) and cfg.model.source != "builtin":
        sft_examples = sft_examples()
    dtype = pick_dtype(cfg, device)
    if cfg.model.source == "builtin":
        base, tokenizer, key, _ = load_builtin(cfg, sft_examples or [], corpus_id, device)
    else:
        base, tokenizer, key = load_hub(cfg, device, dtype)
        if cfg.model.sft.enabled and sft_examples:
            key = cache.content_key("hub-sft-v2", key, corpus_id, cfg.model.sft, cfg.task_seed)
            sft_train(base, tokenizer, sft_examples, cfg.model.sft, cfg.train.max_length, device, cfg.task_seed)
    base.to(device)
    policy, reference = _policy_and_reference(cfg, base)
    models = Models(policy=policy, reference=reference, tokenizer=tokenizer, key=key, device=device)
    if cfg.train.padding_free:
        models.padding_free = _packing_agrees(cfg, models)
    return models


def _policy_and_reference(cfg, base) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """(trainable policy, frozen reference): LoRA adapters on `base` with no separate reference,
    or `base` itself and a frozen copy of it."""
    if cfg.model.get("lora"):
        from peft import LoraConfig, get_peft_model

        lora = cfg.model.lora
        policy = get_peft_model(base, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
        reference = None
    else:
        reference = copy.deepcopy(base).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
        policy = base
    policy.train()
    return policy, reference


def _packing_agrees(cfg, models: Models) -> bool:
    """Whether the model scores packed sequences as it scores padded ones (a warning when not)."""
    check = (models.key, models.device.type)
    if check not in _PACKING_AGREES:  # once per model and process: every trial of a sweep worker loads it
        with models.reference_model() as ref:
            _PACKING_AGREES[check] = packing_agrees(ref, len(models.tokenizer), models.device)
    if not _PACKING_AGREES[check]:
        log.warning("model %s scores packed sequences differently from padded ones; training with "
                    "padded batches (train.padding_free ignored)", cfg.model.name)
    return _PACKING_AGREES[check]
