"""Judges score (prompt, response) texts; win rate compares the policy's score with the reference's."""

from __future__ import annotations

import torch

from alignbench.data import builtin_task as task


class GoldJudge:
    """The built-in task's ground-truth reward."""

    name = "gold"

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [task.gold_reward(p, r) for p, r in zip(prompts, responses)]


class RewardModelJudge:
    """Any Hugging Face sequence-classification model (one logit = reward) on prompt + response."""

    name = "reward_model"

    def __init__(self, model, tokenizer, device, batch_size: int = 32, max_length: int = 512):
        self.model, self.tokenizer, self.device = model.eval(), tokenizer, device
        self.batch_size, self.max_length = batch_size, max_length

    @classmethod
    def from_pretrained(cls, path: str, device, trust_remote_code: bool = False, batch_size: int = 32):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, use_safetensors=True, trust_remote_code=trust_remote_code).to(device)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
            model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model, tokenizer, device, batch_size)

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        out: list[float] = []
        texts = [p + r for p, r in zip(prompts, responses)]
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[s:s + self.batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length).to(self.device)
            out += self.model(**enc).logits[:, 0].float().cpu().tolist()
        return out
