"""Fixed data a run computes once and caches on disk: the tokenised preference pairs and the
reference model's log-probs of them (or of KTO's unpaired examples), keyed by content so a
second trial with the same reference and data skips the reference forward pass."""

from __future__ import annotations

import torch

from alignbench import cache
from alignbench.data.measuring import LengthLimits
from alignbench.data.records import PreferenceRecord
from alignbench.data.tokenizing import tokenize_pairs
from alignbench.models.loading import Models
from alignbench.models.logps import unpaired_logps
from alignbench.models.pairs import pair_logps


def cached_tokenize_pairs(records: list[PreferenceRecord], tokenizer, model_key: str, limits: LengthLimits,
                          cache_dir: str) -> dict[str, torch.Tensor]:
    """`tokenize_pairs`, cached on disk under the tokenizer (the model key), the records and the lengths."""
    from safetensors.torch import load_file, save_file

    max_length, max_prompt_length = limits.max_length, limits.max_prompt_length
    key = cache.content_key("tokens-pairs-v1", model_key, cache.records_digest(records), max_length, max_prompt_length)

    def write(path):
        tokens = tokenize_pairs(records, tokenizer, max_length, max_prompt_length)
        save_file({k: v.contiguous() for k, v in tokens.items()}, str(path / "tokens.safetensors"))

    return cache.load_cached(cache_dir, "tokens", key, write,
                             lambda path: load_file(str(path / "tokens.safetensors")))[0]


def run_reference(models: Models, compute) -> dict[str, torch.Tensor]:
    """One pass of the reference model over fixed data: what a cache miss costs."""
    with models.reference_model() as ref:
        return compute(ref)


def _cached_reference(cache_dir: str, models: Models, tokens: dict, kind: str, compute) -> dict[str, torch.Tensor]:
    """Reference log-probs of fixed data, cached on disk: trials after the first skip the forward."""
    from safetensors.torch import load_file, save_file

    layout = (models.padding_free, "shared-prompt") if models.share_prompt else models.padding_free  # the old key when off
    key = cache.content_key("ref-logps-v1", kind, models.key, cache.tensor_digest(tokens), layout)

    def write(path):
        out = run_reference(models, compute)
        save_file({k: v.contiguous() for k, v in out.items()}, str(path / "logps.safetensors"))

    return cache.load_cached(cache_dir, "ref_logps", key, write,
                             lambda path: load_file(str(path / "logps.safetensors")))[0]


def reference_pair_logps(models: Models, tokens: dict, batch_size: int, cache_dir: str) -> dict[str, torch.Tensor]:
    """The reference's log-probs of tokenised pairs, `batch_size` pairs a forward (`eval.batch_size`)."""
    return _cached_reference(cache_dir, models, tokens, "pairs",
                             lambda ref: pair_logps(ref, tokens, batch_size, models.device,
                                                    models.padding_free, models.share_prompt))


def reference_unpaired_logps(models: Models, tokens: dict, batch_size: int, cache_dir: str) -> dict[str, torch.Tensor]:
    def compute(ref):
        bs, device, packed = batch_size, models.device, models.padding_free
        out = {"logps": unpaired_logps(ref, tokens, bs, device, padding_free=packed)}
        if "kl_input_ids" in tokens:
            out["kl_logps"] = unpaired_logps(ref, tokens, bs, device, prefix="kl_", padding_free=packed)
        return out
    return _cached_reference(cache_dir, models, tokens, "unpaired", compute)
