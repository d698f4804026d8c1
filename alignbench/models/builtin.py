"""The built-in model made from scratch: a byte-level BPE tokenizer trained on the SFT corpus, a
tiny Llama, and the SFT stage (`sft_train`, also run on a hub model when `model.sft.enabled`).
Caching these is `loading.load_builtin`'s job."""

from __future__ import annotations

import math
import random
import time

import torch

from alignbench.data.batching import index_batches
from alignbench.data.tokenizing import build_sequences
from alignbench.models.logps import sequence_logps

SPECIAL_TOKENS = {"pad_token": "<|pad|>", "bos_token": "<|bos|>", "eos_token": "<|eos|>"}


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts`: encodes any text, needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def build_tiny_model(model_cfg, tokenizer, seed: int):
    """A freshly initialised (seeded) tiny Llama of `model_cfg`'s sizes over `tokenizer`'s vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def sft_train(model, tokenizer, examples: list[tuple[str, str]], sft_cfg, max_length: int,
              device: torch.device, seed: int) -> dict:
    """Supervised fine-tuning on (prompt, response) pairs, loss on response tokens only."""

    rng = random.Random(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=sft_cfg.lr)
    prompt_tok = tokenizer([p for p, _ in examples], add_special_tokens=False)["input_ids"]
    resp_tok = tokenizer([r for _, r in examples], add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt_tok = [bos + p for p in prompt_tok]
    resp_tok = [r + [tokenizer.eos_token_id] for r in resp_tok]
    t0, losses = time.time(), []
    order = index_batches(len(examples), sft_cfg.batch_size, lambda n: rng.sample(range(n), n))
    for step in range(sft_cfg.steps):
        idx = next(order).tolist()
        ids, attn, resp = build_sequences([prompt_tok[i] for i in idx], [resp_tok[i] for i in idx],
                                          tokenizer.pad_token_id, max_length)
        lr_scale = min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / sft_cfg.steps))
        for group in optimizer.param_groups:
            group["lr"] = sft_cfg.lr * lr_scale
        logp_sum, n_tok = sequence_logps(model, ids.to(device), attn.to(device), resp.to(device))
        loss = -(logp_sum.sum() / n_tok.sum())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return {"sft/final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "sft/seconds": time.time() - t0,
            "sft/steps": sft_cfg.steps}
