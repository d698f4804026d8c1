"""Policy, reference and tokenizer: the built-in tiny model (`builtin`, its SFT stage cached) or a hub model.

Hub models load through `from_pretrained` with safetensors only and `trust_remote_code` off
unless the config asks for it; SFT first when `model.sft.enabled` (on the data's preferred
responses, cached like the built-in model's); LoRA adapters through peft, in which case the
reference is the same base model with the adapters disabled (no second copy in memory).

The reference runs at the policy's precision: with bf16 the policy runs under accelerate's bf16
autocast, and `Models.reference_model` enters the same autocast, so at step 0 (policy ==
reference) log-ratios and the sampled KL are exactly 0.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from alignbench import cache
from alignbench.config import ConfigError
from alignbench.models.builtin import build_tiny_model, sft_train, train_tokenizer
from alignbench.models.gguf import dequantised_folder
from alignbench.models.logps import packing_agrees
from alignbench.models.pairs import shared_prompt_agrees
from alignbench.models.settings import LoadSettings, LoRASettings

log = logging.getLogger(__name__)


@dataclass
class Models:
    policy: torch.nn.Module
    reference: torch.nn.Module | None  # None when LoRA: the reference is the policy with adapters off
    tokenizer: object
    key: str  # content key of the reference model: every cache of reference outputs uses it
    device: torch.device
    padding_free: bool = False  # score sequences packed several to a row (`logps.packed_sequence_logps`)
    share_prompt: bool = False  # score a pair's two sides in one row holding the prompt once (`pairs`)
    autocast_dtype: torch.dtype | None = None  # bf16: the policy's autocast (accelerate's), the reference's too

    def autocast(self):
        """The policy's precision as a context: bf16 autocast on the run's device, or nothing (fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @contextlib.contextmanager
    def reference_model(self):
        """The frozen reference, in eval mode, without gradients, at the policy's precision."""
        if self.reference is not None:
            with torch.no_grad(), self.autocast():
                yield self.reference
            return
        was_training = self.policy.training
        self.policy.eval()
        with torch.no_grad(), self.autocast(), self.policy.disable_adapter():
            yield self.policy
        self.policy.train(was_training)


def pick_device(device: str) -> torch.device:
    """`device=`: auto (CUDA when available), cpu or cuda; under a launcher (LOCAL_RANK set) each
    process's own GPU, the one accelerate gives it."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device=cuda but CUDA is not available")
    local_rank = os.environ.get("LOCAL_RANK")
    return torch.device("cuda", int(local_rank)) if local_rank is not None else torch.device("cuda")


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """`precision=`: auto (bf16 on CUDA, fp32 elsewhere), fp32 or bf16."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def load_builtin(s: LoadSettings, sft_examples: list[tuple[str, str]], corpus_id: str, device: torch.device):
    """The built-in model: tokenizer + SFT, cached under a key of everything that determines them."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    m = s.model
    key = cache.content_key("tiny-sft-v2", m.config(), corpus_id, s.task_seed, s.max_length)

    def write(path: Path):
        log.info("SFT stage: training the built-in model (cached afterwards under %s)", key)
        examples = sft_examples() if callable(sft_examples) else sft_examples  # built only on a miss
        texts = [p + r for p, r in examples]
        tokenizer = train_tokenizer(texts, m.tiny.vocab_size)
        model = build_tiny_model(m.tiny, tokenizer, s.task_seed)  # the reference model: fixed across training seeds
        stats = sft_train(model, tokenizer, examples, m.sft, s.max_length, device, s.task_seed,
                          s.max_prompt_length, s.long_prompts)
        log.info("SFT done: loss %.3f in %.1fs", stats["sft/final_loss"], stats["sft/seconds"])
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        (path / "sft_stats.json").write_text(json.dumps(stats))

    def read(path: Path):
        if _LOADED.get("key") != key:  # a sweep worker reads the SFT model from disk once, then copies it
            tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
            _LOADED.clear()
            _LOADED.update(key=key, model=model.eval(), tokenizer=tokenizer)

    _, path, hit = cache.load_cached(s.cache_dir, "sft", key, write, read)  # a broken entry is rebuilt
    if hit:
        log.info("SFT stage: cache hit %s", path)
    return copy.deepcopy(_LOADED["model"]), copy.deepcopy(_LOADED["tokenizer"]), key, path


_PACKING_AGREES: dict = {}  # (model key, device type) -> whether packed scoring equals padded
_LOADED: dict = {}  # the last built-in SFT model loaded in this process (~1 MB): key, model, tokenizer


# --------------------------------------------------------------------------- hub models

def hub_from_pretrained(path, dtype, trust: bool, revision=None):
    """(causal LM, tokenizer with a pad token) from a hub id or a local folder, safetensors only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust, revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, use_safetensors=True, trust_remote_code=trust, revision=revision)
    return model, tokenizer


def load_hub(s: LoadSettings, device, dtype, sft_examples=None, corpus_id: str = ""):
    """(model, tokenizer, key) of a hub model; when `model.sft.enabled` and there are SFT examples
    (a list, or a callable built only on a cache miss), the model after the SFT stage, which is
    trained in fp32 once and cached (safetensors) under a key of everything that determines it."""
    m = s.model
    trust, revision = m.trust_remote_code, m.revision
    source, source_id = m.path, m.path
    if m.gguf is not None:  # a GGUF file in an installed package, dequantised once into a local folder
        source = dequantised_folder(m.gguf, s.cache_dir)
        source_id = f"gguf:{source.name}"
    if not (m.sft.enabled and sft_examples):
        model, tokenizer = hub_from_pretrained(source, dtype, trust, revision)
        return model, tokenizer, cache.content_key("hub-v1", source_id, str(dtype), revision)
    key = cache.content_key("hub-sft-v3", source_id, revision, corpus_id, json.loads(m.sft.config_json), s.task_seed,
                            s.max_length, s.max_prompt_length, s.long_prompts)

    def write(path: Path):
        log.info("SFT stage: training %s (cached afterwards under %s)", source_id, key)
        model, tokenizer = hub_from_pretrained(source, torch.float32, trust, revision)
        examples = sft_examples() if callable(sft_examples) else sft_examples
        stats = sft_train(model, tokenizer, examples, m.sft, s.max_length, device, s.task_seed,
                          s.max_prompt_length, s.long_prompts)
        log.info("SFT done: loss %.3f in %.1fs", stats["sft/final_loss"], stats["sft/seconds"])
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        (path / "sft_stats.json").write_text(json.dumps(stats))

    (model, tokenizer), path, hit = cache.load_cached(s.cache_dir, "sft", key, write,
                                                      lambda path: hub_from_pretrained(path, dtype, trust))
    if hit:
        log.info("SFT stage: cache hit %s", path)
    return model, tokenizer, cache.content_key(key, str(dtype))


def check_context(s: LoadSettings, model) -> None:
    """A hub model's positions (known once it is loaded) hold the longest sequence the run builds:
    a training sequence, or a prompt plus a sampled reply; one line otherwise, before any work."""
    context = getattr(model.config, "max_position_embeddings", None)
    longest = max(s.max_length, s.max_prompt_length + s.eval_max_new_tokens)
    if context and longest > context:
        raise ConfigError(f"train.max_length={s.max_length}: with train.max_prompt_length={s.max_prompt_length} + "
                          f"eval.max_new_tokens={s.eval_max_new_tokens}, needs {longest} positions > the context of "
                          f"model={s.model.name} ({context}, max_position_embeddings); lower them")


def load_models(s: LoadSettings, sft_examples=None, corpus_id: str = "") -> Models:
    """Policy + reference + tokenizer on the configured device (before any preference training).

    `sft_examples`: (prompt, response) pairs, or a callable returning them (called only when the
    SFT stage actually runs, so a cache hit does not build the corpus). The key names the model
    and its precision: every cache of reference outputs is keyed on it."""
    device = pick_device(s.device)
    dtype = pick_dtype(s.precision, device)
    if s.model.source == "builtin":
        base, tokenizer, key, _ = load_builtin(s, sft_examples or [], corpus_id, device)
        if dtype != torch.float32:  # the same SFT model, but reference outputs at another precision
            key = cache.content_key(key, str(dtype))
    else:
        base, tokenizer, key = load_hub(s, device, dtype, sft_examples, corpus_id)
        check_context(s, base)
    base.to(device)
    policy, reference = _policy_and_reference(s.model.lora, base)
    models = Models(policy=policy, reference=reference, tokenizer=tokenizer, key=key, device=device,
                    autocast_dtype=dtype if dtype != torch.float32 else None)
    if s.padding_free:
        models.padding_free = _packing_agrees(s.model.name, models)
    if s.share_prompt:
        models.share_prompt = _shared_prompt_agrees(s.model.name, models)
    return models


def peft_lora_config(lora: LoRASettings):
    """peft's LoraConfig of a `model.lora` block."""
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def _policy_and_reference(lora: LoRASettings | None, base) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """(trainable policy, frozen reference): LoRA adapters on `base` with no separate reference,
    or `base` itself and a frozen copy of it."""
    if lora is not None:
        from peft import get_peft_model

        policy = get_peft_model(base, peft_lora_config(lora))
        reference = None
    else:
        reference = copy.deepcopy(base).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
        policy = base
    policy.train()
    return policy, reference


def _packing_agrees(model_name: str, models: Models) -> bool:
    """Whether the model scores packed sequences as it scores padded ones (a warning when not)."""
    check = (models.key, models.device.type)
    if check not in _PACKING_AGREES:  # once per model and process: every trial of a sweep worker loads it
        with models.reference_model() as ref:
            _PACKING_AGREES[check] = packing_agrees(ref, len(models.tokenizer), models.device)
    if not _PACKING_AGREES[check]:
        log.warning("model %s scores packed sequences differently from padded ones; training with "
                    "padded batches (train.padding_free ignored)", model_name)
    return _PACKING_AGREES[check]


def _shared_prompt_agrees(model_name: str, models: Models) -> bool:
    """Whether the model scores the shared-prompt layout as padded sequences (a warning when not)."""
    with models.reference_model() as ref:
        agrees = shared_prompt_agrees(ref, len(models.tokenizer), models.device)
    if not agrees:
        log.warning("model %s does not score a pair's shared-prompt row as its two sequences; scoring them apart "
                    "(train.share_prompt ignored)", model_name)
    return agrees
