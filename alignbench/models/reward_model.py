"""The reward-model stage of RLHF: a Bradley-Terry scalar reward on the policy's backbone, cached.

Read top to bottom:

1. `RewardModel` — a copy of the SFT (reference) model's transformer backbone with a scalar
   Linear head on the hidden state of the last non-padding token (InstructGPT initialises its
   reward model from the SFT model the same way; Ouyang et al. 2022, section 3.5). The LM head
   is dropped. Scores are shifted and scaled so the training responses have mean 0 and
   standard deviation 1 (InstructGPT normalises its RM so demonstrations score 0): the PPO KL
   coefficient then means the same thing whatever the RM's training budget.
2. `train_reward_model` — loss -log sigmoid(r(x, y_w) - r(x, y_l)) on the training pairs
   (Bradley-Terry; Ouyang et al. 2022 eq. 1), AdamW, a held-out slice of the pairs for accuracy.
3. `load_or_train_reward_model` — the stage, cached on disk (safetensors) under a content key
   of everything that determines it; every PPO trial with the same inputs reuses it.

Its settings come in as a frozen `RewardModelSettings` (built from the config once, in
`training.settings.reward_model_settings`), never as the config itself.

The same object is a judge (`name`, `score(prompts, responses)`) for `judge=reward_model
judge.path=trained` — biased in PPO's favour, since PPO optimised against it.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass

import torch

from alignbench import cache
from alignbench.data.batching import index_batches, trim_padding
from alignbench.data.tokenizing import build_sequences, pad_id, prompt_tokens, response_tokens, tokenize_pairs
from alignbench.models.logps import position_ids_from_mask

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RewardModelSettings:
    """Everything that decides a trained reward model besides the SFT model and the pairs; built once
    from the config (`training.settings.reward_model_settings`), so this module never reads it."""

    steps: int              # Bradley-Terry training steps
    lr: float               # AdamW learning rate (whole backbone + head)
    batch_size: int         # pairs per step
    heldout_fraction: float  # the last pairs kept out of training, for the held-out pair accuracy
    max_length: int         # token budget of prompt + response, as the policy's training data
    max_prompt_length: int
    adam_betas: tuple[float, float]
    weight_decay: float
    max_grad_norm: float
    seed: int               # the task seed: every training seed and method gets the same reward model
    score_batch_size: int   # sequences per forward when scoring (eval.batch_size; not part of what is trained)
    cache_dir: str | None = None  # where the trained model is cached (not part of what is trained)

    def training_key(self) -> tuple:
        """What the trained weights depend on (the cache key's share of these settings)."""
        trained = {"steps": self.steps, "lr": self.lr, "batch_size": self.batch_size,
                   "heldout_fraction": self.heldout_fraction}
        return (trained, self.seed, self.max_length, self.max_prompt_length, list(self.adam_betas),
                self.weight_decay, self.max_grad_norm)


class RewardModel(torch.nn.Module):
    """Backbone + scalar head; `score` for texts (a judge), `score_tokens` for PPO rollouts."""

    name = "reward_model"

    def __init__(self, backbone: torch.nn.Module, hidden_size: int, tokenizer, settings: RewardModelSettings, device):
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.normal_(self.head.weight, std=1.0 / (hidden_size + 1) ** 0.5)  # TRL's RM head init
        torch.nn.init.zeros_(self.head.bias)
        self.head.to(device=device, dtype=next(backbone.parameters()).dtype)
        self.tokenizer, self.device = tokenizer, device
        self.max_length, self.max_prompt_length = settings.max_length, settings.max_prompt_length
        self.batch_size = settings.score_batch_size
        self.shift, self.scale = 0.0, 1.0  # normalisation, set after training
        self.stats: dict[str, float] = {}  # rm/pair_accuracy, rm/train_loss, ...
        self.path = None  # cache entry it was loaded from
        self.key = None  # its content key: part of every cache key that depends on its scores

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) reward [B] at the last non-padding token; works for left padding
        (rollouts: left-padded prompt, right-padded response) and right padding (pairs)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = torch.where(attention_mask.bool(), positions, -1).max(-1).values
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return self.head(hidden[rows, last]).squeeze(-1).float()

    @torch.no_grad()
    def score_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised scores [B] (CPU, float32) of token sequences, in batches: PPO's rollout scorer."""
        was_training = self.training
        self.eval()
        out = []
        for s in range(0, input_ids.shape[0], self.batch_size):
            ids = input_ids[s:s + self.batch_size].to(self.device)
            mask = attention_mask[s:s + self.batch_size].to(self.device)
            out.append(self(ids, mask).cpu())
        self.train(was_training)
        return (torch.cat(out) - self.shift) / self.scale

    def tokenize(self, prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """[BOS] prompt + response + EOS, right-padded: the tokenisation the RM was trained on."""
        prompt_tok = prompt_tokens(self.tokenizer, prompts)
        prompt_tok = [p[-self.max_prompt_length:] if len(p) > self.max_prompt_length else p for p in prompt_tok]
        ids, attn, _ = build_sequences(prompt_tok, response_tokens(self.tokenizer, responses),
                                       pad_id(self.tokenizer), self.max_length)
        return ids, attn

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Judge interface: one normalised score per (prompt, response) text."""
        if not prompts:
            return []
        return self.score_tokens(*self.tokenize(list(prompts), list(responses))).tolist()


# --------------------------------------------------------------------------- building

def _backbone_source(models):
    """The SFT model the RM starts from: the frozen reference, or (LoRA) the base with adapters merged
    before any training (LoRA's B matrices start at 0, so merging changes nothing)."""
    if models.reference is not None:
        return copy.deepcopy(models.reference)
    return copy.deepcopy(models.policy).merge_and_unload()


def build_reward_model(settings: RewardModelSettings, models) -> RewardModel:
    src = _backbone_source(models)
    backbone = src.base_model  # the transformer without its LM head (LlamaModel for LlamaForCausalLM)
    for p in backbone.parameters():
        p.requires_grad_(True)
    backbone.train()
    return RewardModel(backbone, src.config.hidden_size, models.tokenizer, settings, models.device)


# --------------------------------------------------------------------------- training

def _pair_rewards(rm: RewardModel, tokens: dict, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw rewards of chosen and rejected for rows `idx`, in one concatenated forward."""
    n = len(idx)
    ids = torch.cat([tokens["chosen_input_ids"][idx], tokens["rejected_input_ids"][idx]])
    attn = torch.cat([tokens["chosen_attention_mask"][idx], tokens["rejected_attention_mask"][idx]])
    ids, attn, _ = trim_padding(ids, attn, attn)
    r = rm(ids.to(rm.device), attn.to(rm.device))
    return r[:n], r[n:]


@torch.no_grad()
def _evaluate_pairs(rm: RewardModel, tokens: dict, batch_size: int) -> tuple[float, torch.Tensor]:
    """(pair accuracy, all raw rewards chosen+rejected) over every pair in `tokens`."""
    rm.eval()
    correct, rewards = 0.0, []
    n = len(tokens["chosen_input_ids"])
    for s in range(0, n, batch_size):
        rc, rr = _pair_rewards(rm, tokens, torch.arange(s, min(n, s + batch_size)))
        correct += (rc > rr).float().sum().item() + 0.5 * (rc == rr).float().sum().item()
        rewards += [rc.cpu(), rr.cpu()]
    rm.train()
    return correct / max(n, 1), torch.cat(rewards)


def train_reward_model(settings: RewardModelSettings, models, train_records) -> RewardModel:
    """Bradley-Terry training on all but a held-out slice of `train_records` (the last pairs)."""
    st = settings
    t0 = time.time()
    torch.manual_seed(st.seed)
    rm = build_reward_model(st, models)
    n_held = max(1, int(len(train_records) * st.heldout_fraction)) if len(train_records) > 1 else 0
    fit, held = train_records[: len(train_records) - n_held], train_records[len(train_records) - n_held:]
    tok = lambda recs: tokenize_pairs(recs, models.tokenizer, st.max_length, st.max_prompt_length)  # noqa: E731
    fit_tokens = tok(fit)
    optimizer = torch.optim.AdamW(rm.parameters(), lr=st.lr, betas=tuple(st.adam_betas), weight_decay=st.weight_decay)
    gen = torch.Generator().manual_seed(st.seed)
    losses, batch_size = [], min(st.batch_size, len(fit))
    order = index_batches(len(fit), batch_size, lambda n: torch.randperm(n, generator=gen))
    for step in range(st.steps):
        idx = next(order)
        r_w, r_l = _pair_rewards(rm, fit_tokens, idx)
        loss = -torch.nn.functional.logsigmoid(r_w - r_l).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), st.max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
    train_acc, fit_rewards = _evaluate_pairs(rm, fit_tokens, st.score_batch_size)
    held_acc = _evaluate_pairs(rm, tok(held), st.score_batch_size)[0] if held else float("nan")
    rm.shift, rm.scale = fit_rewards.mean().item(), max(fit_rewards.std().item(), 1e-6)
    tail = losses[-20:] or [float("nan")]
    rm.stats = {"rm/pair_accuracy": held_acc, "rm/train_pair_accuracy": train_acc,
                "rm/train_loss": sum(tail) / len(tail), "rm/seconds": time.time() - t0,
                "rm/n_train_pairs": float(len(fit)), "rm/n_heldout_pairs": float(len(held))}
    log.info("reward model: held-out pair accuracy %.3f (train %.3f), loss %.3f, %d steps in %.1fs",
             held_acc, train_acc, rm.stats["rm/train_loss"], st.steps, rm.stats["rm/seconds"])
    rm.eval()
    return rm


def load_or_train_reward_model(settings: RewardModelSettings, models, train_records) -> RewardModel:
    """The reward-model stage, cached under a key of everything that determines it: the SFT model
    (and its precision), the pairs, the RM config, the task seed (the reward model is fixed like the
    preference data: every training seed and every method that uses it gets the same one), the
    lengths it tokenises to and the shared optimiser settings; a hit loads the weights
    (safetensors) and skips training. That key is the model's identity (`RewardModel.key`)."""
    from safetensors.torch import load_model, save_model

    trained, *rest = settings.training_key()
    key = cache.content_key("rm-v3", models.key, cache.records_digest(train_records), trained, *rest)

    def write(path):
        rm = train_reward_model(settings, models, train_records)
        save_model(rm, str(path / "reward_model.safetensors"))
        meta = {"shift": rm.shift, "scale": rm.scale, "stats": rm.stats, "config": trained}
        (path / "meta.json").write_text(json.dumps(meta, indent=1))

    def read(path):
        rm = build_reward_model(settings, models)
        load_model(rm, str(path / "reward_model.safetensors"), device=str(models.device))
        meta = json.loads((path / "meta.json").read_text())
        rm.shift, rm.scale, rm.stats, rm.path, rm.key = meta["shift"], meta["scale"], meta["stats"], path, key
        return rm

    rm, path, hit = cache.load_cached(settings.cache_dir, "reward_model", key, write, read)  # a broken entry is rebuilt
    for p in rm.parameters():
        p.requires_grad_(False)
    rm.eval()
    if hit:
        log.info("reward model: cache hit %s (held-out pair accuracy %.3f)", path, rm.stats["rm/pair_accuracy"])
    return rm
