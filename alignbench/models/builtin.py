"""The built-in model made from scratch: a byte-level BPE tokenizer trained on the SFT corpus, a
tiny Llama, and the SFT stage (`sft_train`, also run on a hub model when `model.sft.enabled`).
Caching these is `loading.load_builtin`'s job."""

from __future__ import annotations

import math
import random
import time

import torch

from alignbench.data.batching import index_batches
from alignbench.data.records import DataError
from alignbench.data.tokenizing import build_sequences, fit_prompt, prompt_tokens, response_tokens
from alignbench.models.logps import sequence_logps
from alignbench.models.settings import SFTSettings, TinySizes
from alignbench.process import interruptible

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
    interruptible(tok.train_from_iterator, texts, trainer=trainer)  # SIGTERM/Ctrl-C within 0.1 s, not after training
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def build_tiny_model(sizes: TinySizes, tokenizer, seed: int):
    """A freshly initialised (seeded) tiny Llama of `sizes` over `tokenizer`'s vocabulary,
    with room for `sizes.context_length` positions (prompt + response)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_layers,
        num_attention_heads=sizes.num_heads,
        num_key_value_heads=sizes.num_heads,
        max_position_embeddings=sizes.context_length,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def sft_examples_tokens(tokenizer, examples: list[tuple[str, str]], max_prompt_length: int,
                        long_prompts: str) -> tuple[list[list[int]], list[list[int]], int]:
    """(prompt tokens, response tokens, examples dropped) under the preference data's rules: a prompt
    over max_prompt_length is cut from the left (`fit_prompt`) or dropped, as `long_prompts` says."""
    prompts = prompt_tokens(tokenizer, [p for p, _ in examples])
    responses = response_tokens(tokenizer, [r for _, r in examples])
    bos, kept_prompts, kept_responses = tokenizer.bos_token_id, [], []
    for prompt, response in zip(prompts, responses):
        if len(prompt) > max_prompt_length and long_prompts == "drop":
            continue
        kept_prompts.append(fit_prompt(prompt, max_prompt_length, bos))
        kept_responses.append(response)
    return kept_prompts, kept_responses, len(examples) - len(kept_prompts)


def sft_steps(sft: SFTSettings, n_examples: int) -> int:
    """`sft.steps`, or fewer when that many would pass over the corpus more than
    `sft.max_epochs` times (a small data set is learnt by then; more passes only cost time)."""
    steps = sft.steps
    if sft.max_epochs:
        steps = min(steps, max(1, math.ceil(sft.max_epochs * n_examples / sft.batch_size)))
    return steps


def sft_train(model, tokenizer, examples: list[tuple[str, str]], sft: SFTSettings, max_length: int,
              device: torch.device, seed: int, max_prompt_length: int | None = None,
              long_prompts: str = "truncate_left") -> dict:
    """Supervised fine-tuning on (prompt, response) pairs, loss on response tokens only. Prompts
    longer than `max_prompt_length` (default: max_length - 1) are cut from the left or dropped."""

    rng = random.Random(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=sft.lr)
    max_prompt_length = max_prompt_length or max_length - 1
    prompt_tok, resp_tok, n_dropped = sft_examples_tokens(tokenizer, examples, max_prompt_length, long_prompts)
    if not prompt_tok:
        raise DataError(f"no SFT example has a prompt within max_prompt_length={max_prompt_length} tokens "
                        "(set data.long_prompts=truncate_left or a larger train.max_prompt_length)")
    n_steps = sft_steps(sft, len(prompt_tok))
    t0, losses = time.time(), []
    order = index_batches(len(prompt_tok), sft.batch_size, lambda n: rng.sample(range(n), n))
    for step in range(n_steps):
        idx = next(order).tolist()
        ids, attn, resp = build_sequences([prompt_tok[i] for i in idx], [resp_tok[i] for i in idx],
                                          tokenizer.pad_token_id, max_length)
        lr_scale = min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / n_steps))
        for group in optimizer.param_groups:
            group["lr"] = sft.lr * lr_scale
        logp_sum, n_tok = sequence_logps(model, ids.to(device), attn.to(device), resp.to(device))
        loss = -(logp_sum.sum() / n_tok.sum())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return {"sft/final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "sft/seconds": time.time() - t0,
            "sft/steps": n_steps, "sft/examples": len(prompt_tok), "sft/dropped_prompt_too_long": n_dropped}
